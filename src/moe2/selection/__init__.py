"""moe2.selection"""
