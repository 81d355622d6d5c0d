"""``moe2 verify BUNDLE``: exit 0 only for a complete, untampered bundle whose parity records hold."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict[str, Any]:
    """Verify ``bundle.path``; a problem raises BundleError (exit code 4) naming it."""
    from rich.console import Console

    from moe2.format.manifest import summary, verify_bundle

    info = summary(verify_bundle(str(cfg.bundle.path)))
    Console().print(
        f"[green]OK[/green] {cfg.bundle.path}: {info['files']} files ({info['bytes'] / 1e6:.1f} MB) match "
        f"their sha256, {info['parity_records']} parity records pass; experts {', '.join(info['experts'])}; "
        f"plans {', '.join(info['targets']) or 'none'}; engines "
        f"{', '.join(f'{t}: {b}' for t, b in info['engine_builders'].items()) or 'none'}"
    )
    return info
