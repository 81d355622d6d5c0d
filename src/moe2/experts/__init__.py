"""moe2.experts"""
