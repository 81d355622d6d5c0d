"""``moe2 import``: placeholder wired for CLI plumbing check."""
from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict:
    print("import", cfg.paths.artifacts, cfg.data)
    return {}
