"""Thin Hydra entry points, one per stage; each ``main(cfg)`` calls one library function."""
