"""``moe2 ask BUNDLE "prompt"``: answer with a bundle and show the routing and the cost estimate."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def render(answer: Any) -> None:
    """Print an :class:`~moe2.runtime.bundle.Answer` with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Q:[/bold] {answer.prompt}")
    console.print(f"[bold green]A:[/bold green] {answer.answer}")
    table = Table(title=f"experts used ({answer.aggregation}, {answer.backend})")
    for col in (
        "expert",
        "gate weight",
        "answer",
        "tokens",
        "est. latency ms",
        "est. energy J",
        "ran s",
    ):
        table.add_column(col)
    for u in answer.experts:
        table.add_row(
            u.name,
            f"{u.weight:.3f}",
            u.answer[:60],
            str(u.tokens),
            "-" if u.est_latency_ms is None else f"{u.est_latency_ms:.0f}",
            "-" if u.est_energy_j is None else f"{u.est_energy_j:.2f}",
            f"{u.seconds:.2f}",
        )
    console.print(table)
    gate = ", ".join(
        f"{e} {w:.3f}" for e, w in sorted(answer.gate_weights.items(), key=lambda kv: -kv[1])
    )
    console.print(f"gate over the bundle's experts: {gate}")
    lat = "-" if answer.est_latency_ms is None else f"{answer.est_latency_ms:.0f} ms"
    en = "-" if answer.est_energy_j is None else f"{answer.est_energy_j:.2f} J"
    console.print(
        f"estimated request latency {lat}, energy {en} (bundle cost profile, category {answer.category or 'mean'})"
    )
    if answer.scores is not None:
        ranked = sorted(answer.scores.items(), key=lambda kv: -kv[1]["score"])
        lam = (answer.cost or {}).get("lambda")
        knob = "lambda" if lam is None else f"lambda = {lam:.6g}"
        console.print(
            f"cost-aware scores (quality - lambda x cost, {knob}): "
            + ", ".join(
                f"{e} {s['quality']:.3f} - lambda x {s['cost']:.3g} -> {s['score']:.3f}"
                for e, s in ranked
            )
        )
    if answer.cost is not None:
        c = answer.cost
        console.print(
            f"predicted {c['metric']} of this request: {c['value']:.6g} {c['unit']} "
            f"(cost-aware routing, lambda {c['lambda']:.6g}, category {c['category'] or 'unknown'})"
        )
    for note in answer.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def remote_experts(bundle: Any, deployment: Any) -> dict[str, Any]:
    """The bundle's experts that the deployment (or the bundle) puts at an OpenAI-compatible
    endpoint, as clients; none connects before it is called. An expert the bundle holds no
    weights for and that has no URL is left out: it is an error only if the prompt is routed to
    it (:meth:`moe2.runtime.bundle.Bundle.ask` names it)."""
    import os

    from moe2.experts.base import Template
    from moe2.experts.openai import OpenAIExpert
    from moe2.serving.config import load_deployment

    placements = load_deployment(deployment or {}, bundle.subset, bundle.endpoints, strict=False)
    out = {}
    for name, pl in placements.items():
        if pl.kind != "openai":
            continue
        out[name] = OpenAIExpert(
            name,
            str(pl.url),
            str(pl.model or name),
            # no cut from the left here: a prompt too long for the endpoint is its error
            context_length=int(pl.context_length or 1 << 30),
            template=Template(plain="{text}"),  # the prompt as sent, as serve's /v1/completions
            api_key=os.environ.get(pl.api_key_env) if pl.api_key_env else None,
            concurrency=1,
            timeout_s=float(pl.timeout_s),
            max_retries=int(pl.max_retries),
            backoff_s=float(pl.backoff_s),
        )
    return out


def main(cfg: DictConfig) -> dict[str, Any]:
    """Load (verify) the bundle, answer ``cfg.prompt``, print and return the answer."""
    from dataclasses import asdict

    from moe2.data.validate import check_prompt
    from moe2.runtime import load_bundle

    choices = cfg.choices
    if choices is not None:
        # choices=Paris (a single value) is one option, refused by check_prompt below
        choices = OmegaConf.to_container(choices) if OmegaConf.is_config(choices) else [choices]
    # refuse a bad prompt before the bundle's models are loaded
    check_prompt(cfg.prompt, [str(c) for c in choices] if choices is not None else None, "prompt")
    knob = cfg.get("routing") or {}
    bundle = load_bundle(str(cfg.bundle.path), backend=str(cfg.backend), threads=cfg.threads)
    answer = bundle.ask(
        str(cfg.prompt),
        choices=[str(c) for c in choices] if choices else None,
        max_new_tokens=cfg.max_new_tokens,
        k=cfg.k,
        aggregation=cfg.aggregation,
        category=cfg.category,
        lam=knob.get("lambda"),
        mean_budget=knob.get("mean_budget"),
        remote=remote_experts(bundle, cfg.get("deployment")),
    )
    render(answer)
    return asdict(answer)
