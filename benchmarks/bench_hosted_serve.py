"""A bundle of hosted experts, served: does ``moe2 serve`` route as ``moe2 select`` chose?

A run of the README's hosted-table commands (``import`` → ``train oof.folds=5`` → ``select
budget=none budget.mean.cost=B`` → ``export``) leaves a bundle whose experts run at endpoints.
This starts one OpenAI-compatible toy server per expert of the bundle on 127.0.0.1 (the tests'
``tests/_completions_server.py``: each answers its own word), a real ``moe2 serve`` process with a
deployment file that puts every expert at its server, and then, for every prompt of a split:

1. ``POST /v1/route`` (category given): the expert the server picks at the calibrated λ, against
   the selection stage's own rule on the same prompt (``q`` = sigmoid of the trained gate's
   correctness logits in ``gating/correctness.parquet``, PyTorch fp32; cost = the bundle's cost
   table), so the agreement measures the exported gate (ONNX, as shipped) and the served rule;
2. the realised mean cost and accuracy of the served choices, from the outcome table, beside
   the selection's own rule on the same prompts;
3. ``POST /v1/completions`` for the first ``--answer`` prompts: the reply must come from the
   chosen expert's server (its word), with the predicted cost in ``x-moe2-cost``.

    python benchmarks/bench_hosted_serve.py --run runs/rb --split val

Use a split the choices did not look at as the check's prompts (``val``: the selection
calibrated λ on out-of-fold logits of train+val, so this is a parity check, not a quality figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _completions_server() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_completions_server",
        Path(__file__).resolve().parents[1] / "tests" / "_completions_server.py",
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.CompletionsServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="paths.artifacts of the run")
    ap.add_argument("--split", default="val")
    ap.add_argument("--answer", type=int, default=20, help="prompts also answered end to end")
    args = ap.parse_args()

    import httpx
    import yaml

    from moe2.data.tables import load_outcomes
    from moe2.gating.logits import CORRECT_FILE, read_logits
    from moe2.runtime import load_bundle
    from moe2.serving.process import ServerProcess

    bundle = load_bundle(args.run / "bundle", backend="onnxruntime")
    cr = bundle.cost_routing
    if cr is None or not bundle.endpoints:
        raise SystemExit("the bundle has no cost routing or no endpoint experts")
    subset = list(bundle.subset)
    data = load_outcomes(args.run / "outcomes")
    rows = np.flatnonzero(data.split_mask(args.split))
    cols = [data.experts.index(e) for e in subset]
    texts = [data.texts[i] for i in rows]
    cats = [str(data.categories[int(data.category_idx[i])]) for i in rows]
    score = data.scores[np.ix_(rows, cols)]
    cost = np.asarray(data.cost, dtype=np.float64)[np.ix_(rows, cols)]
    # the selection's rule on these prompts: trained gate's heads (fp32), the bundle's cost table
    q_logit = read_logits(args.run / "gating" / CORRECT_FILE).align(
        [data.prompt_ids[i] for i in rows], subset
    )
    q = 1.0 / (1.0 + np.exp(-q_logit.astype(np.float64)))
    rule = np.argmax(
        q - cr.lam * cr.cost_rows(cats)[:, [list(cr.experts).index(e) for e in subset]], axis=1
    )

    Server = _completions_server()
    words = {e: f"word{i}" for i, e in enumerate(subset)}
    servers = {e: Server(model=f"served-{i}", favored={words[e]}) for i, e in enumerate(subset)}
    for s in servers.values():
        s.__enter__()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dep = Path(tmp) / "endpoints.yaml"
            dep.write_text(yaml.safe_dump({"experts": {
                e: {"kind": "openai", "url": servers[e].url, "model": servers[e].model, "chat": False}
                for e in subset}}), encoding="utf-8")  # fmt: skip
            with ServerProcess("serve", args.run / "bundle", [f"deployment.file={dep}"]) as p:
                client = httpx.Client(base_url=p.url, timeout=30)
                served, ms = [], []
                for text, cat in zip(texts, cats, strict=True):
                    t0 = time.perf_counter()
                    r = client.post("/v1/route", json={"prompt": text, "moe2": {"category": cat}})
                    ms.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    served.append(subset.index(r.json()["chosen"][0]))
                answered = ok = 0
                for text, cat in list(zip(texts, cats, strict=True))[: args.answer]:
                    body = {"prompt": text, "max_tokens": 2, "moe2": {"category": cat}}
                    r = client.post("/v1/completions", json=body)
                    r.raise_for_status()
                    name = r.json()["moe2"]["experts"][0]["name"]
                    answered += 1
                    ok += int(r.json()["choices"][0]["text"].strip() == words[name]
                              and float(r.headers["x-moe2-cost"]) > 0)  # fmt: skip
    finally:
        for s in servers.values():
            s.__exit__(None, None, None)
    served_a = np.asarray(served)
    idx = np.arange(len(rows))
    have = np.isfinite(score[idx, served_a]) & np.isfinite(score[idx, rule])
    out = {
        "split": args.split,
        "prompts": len(rows),
        "subset": subset,
        "lambda": cr.lam,
        "agreement": float((served_a == rule).mean()),
        "served": {"accuracy": float(np.mean(score[idx, served_a][have])),
                   "mean_cost": float(np.nanmean(cost[idx, served_a]))},
        "selection_rule": {"accuracy": float(np.mean(score[idx, rule][have])),
                           "mean_cost": float(np.nanmean(cost[idx, rule]))},
        "share_served": {e: float((served_a == i).mean()) for i, e in enumerate(subset)},
        "route_ms_median": float(np.median(ms)),
        "answered_end_to_end": f"{ok}/{answered} from the chosen expert's endpoint",
    }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
