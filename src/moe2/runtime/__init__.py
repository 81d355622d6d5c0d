"""moe2.runtime"""
