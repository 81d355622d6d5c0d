"""``moe2 export`` as a library function: artifacts (selection, gate, expert weights) -> bundle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from moe2.export.bundle import EndpointSource, ExpertSource, GateSource, write_bundle

from moe2.errors import ConfigError, DataError
from moe2.utils.io import read_json, sha256_file

log = logging.getLogger(__name__)


def _routing_check_data(
    outcomes_dir: Path, gate_experts: list[str], n: int
) -> tuple[list[str] | None, np.ndarray | None, list[str] | None]:
    """Prompts (test split first), their scores ``[P, E]`` in gate order and their categories,
    for the int8 check."""
    if n <= 0 or not (outcomes_dir / "prompts.parquet").is_file():
        return None, None, None
    from moe2.data.tables import load_outcomes

    data = load_outcomes(outcomes_dir)
    order = np.argsort(
        [{"test": 0, "val": 1, "train": 2}.get(str(s), 3) for s in data.splits], kind="stable"
    )[:n]
    texts = [data.texts[i] for i in order]
    cats = [str(data.categories[int(data.category_idx[i])]) for i in order]
    if not all(e in data.experts for e in gate_experts):
        return texts, None, cats
    cols = [data.experts.index(e) for e in gate_experts]
    return texts, data.scores[np.ix_(order, cols)], cats


def _endpoints(selection: dict[str, Any], pool: dict[str, Any], cfg: Any) -> list[EndpointSource]:
    """The selected experts that run at an endpoint: the hosted LLMs of a selection made on a
    pool from the outcome table (``selection.pool=auto``), and pool members whose model card
    has the ``openai`` backend. Any other expert must be a local model of the pool."""
    hosted = bool((selection.get("cost_profile") or {}).get("hosted"))
    missing = [e for e in selection["subset"] if e not in pool]
    if missing and not hosted:
        raise ConfigError(
            f"selected expert(s) {missing} are not in the experts pool '{cfg.experts.get('name')}' "
            f"({sorted(pool)}); export with the pool the selection was made on (experts=...)"
        )
    out = []
    for name in selection["subset"]:
        if name not in pool:
            out.append(EndpointSource(name, origin="table"))
            continue
        card = pool[name].model
        if card.backend == "transformers":
            continue
        source = dict(card.source or {})
        out.append(
            EndpointSource(
                name,
                url=source.get("endpoint"),
                model=source.get("model") or card.name,
                card={
                    "name": card.name,
                    "params": card.params,
                    "context_length": card.context_length,
                },
                origin="pool",
            )
        )
    if out:
        log.info(
            "expert(s) %s run at an endpoint: the bundle packs no weights for them; `moe2 serve` "
            "calls them where the deployment (or, for a pool member, its model card) says",
            [e.name for e in out],
        )
    return out


def export_from_artifacts(cfg: Any) -> Path:
    """Export the bundle of a run: ``selection/selection.json`` + ``gating/`` + the experts' weights.

    Args:
        cfg: the composed ``export`` config (paths, experts pool, export options).

    Returns:
        The bundle directory (``paths.bundle``), verified.
    """
    from omegaconf import OmegaConf

    from moe2.experts.registry import load_pool
    from moe2.gating.net import load_gate

    paths = cfg.paths
    sel_path = Path(str(paths.selection)) / "selection.json"
    if not sel_path.is_file():
        raise DataError(
            f"{sel_path}: not found; run `moe2 select` first (it writes selection/selection.json)"
        )
    selection = read_json(sel_path)
    gate, tokenizer, gate_experts = load_gate(str(paths.gating))
    pool = {e.name: e for e in load_pool(cfg.experts)}
    endpoints = _endpoints(selection, pool, cfg)
    local = [e for e in selection["subset"] if e not in {ep.name for ep in endpoints}]
    from moe2.export.tensorrt.plan import check_context

    from moe2.experts.hf import load_model_and_tokenizer

    # the TensorRT plans' longest decode context must fit each model (the model card's context
    # length; the plans check the graph's again): said before any weights load
    max_ctx = OmegaConf.select(cfg, "export.tensorrt.shapes.max_context", default=None)
    if max_ctx is not None:
        for name in local:
            check_context(f"expert {name}", max_ctx, pool[name].model.context_length)
    loaded: dict[str, tuple[Any, Any]] = {}
    experts = []
    for name in local:
        spec = pool[name]
        card = spec.model
        if card.name not in loaded:
            model, tok, _info = load_model_and_tokenizer(
                card.name, card.source, "cpu", "float32", str(paths.cache)
            )
            loaded[card.name] = (model, tok)
        model, tok = loaded[card.name]
        experts.append(
            ExpertSource(
                name=name,
                model=model,
                tokenizer=tok,
                card={
                    "name": card.name,
                    "params": card.params,
                    "context_length": card.context_length,
                    "description": card.description,
                },
                device=spec.device.name,
                precision=spec.precision,
                placement=spec.placement,
                chat_template=bool(card.chat_template),
                model_key=card.name,
            )
        )
    options = OmegaConf.to_container(cfg.export, resolve=True)
    quant = options.get("quantize", {})
    texts, scores, cats = _routing_check_data(
        Path(str(paths.outcomes)), gate_experts, int(quant.get("routing_prompts", 512))
    )
    inputs = {str(sel_path): sha256_file(sel_path)}
    model_pt = Path(str(paths.gating)) / "model.pt"
    if model_pt.is_file():
        inputs[str(model_pt)] = sha256_file(model_pt)
    return write_bundle(
        Path(str(paths.bundle)),
        gate=GateSource(
            gate, tokenizer, list(gate_experts), max_length=int(getattr(gate, "max_length", 256))
        ),
        experts=experts,
        selection=selection,
        options=options,
        config=OmegaConf.to_container(cfg, resolve=True),
        routing_texts=texts,
        routing_scores=scores,
        inputs=inputs,
        routing_categories=cats,
        endpoints=endpoints,
    )
