"""Frozen all-mpnet-base-v2 sentence embeddings of the shared tables' prompts (issue 10, CV only).

Embeds exactly as sentence-transformers' all-mpnet-base-v2 does (its ``modules.json``: Transformer
with ``max_seq_length`` 384 -> mean pooling over the attention mask -> L2 normalisation), which is
also what moe2's own gate encoder does (``moe2.gating.net.GatingNet.embed``: mean pooling +
``normalize``), so the two encoders' embeddings are comparable. Computed in fp32 (weights as
carried: fp16 upcast), batched by length, and written in the given prompt order as fp32 ``.npy``
files of at most 16 MiB each (``<name>.partK.npy``, rows in order; :func:`join_parts` joins them).

Used twice (benchmarks/RESULTS.md, "A stronger encoder: all-mpnet-base-v2"):

    # on the lent GPU host (the weights and texts carried there)
    python mpnet_device_embed.py --model DIR --texts llmrouter.json routerbench.json --out $OUT
    # on the dev VM CPU, the same weights, a few prompts: the sanity check of the GPU embeddings
    python mpnet_device_embed.py --model DIR --texts llmrouter.json --rows 0,7,... --device cpu \
        --out /tmp/check

``--texts`` files are JSON lists of strings (a table's prompt texts in its imported order, as
``bench_quality.py export-embeddings`` uses). Without torch + transformers this script does nothing
useful; it has no moe2 dependency so that it runs on a bare GPU host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

#: what comes back from the device: at most 16 MiB a file
MAX_BYTES = 16 * 1024 * 1024 - 4096


def embed(
    texts: list[str],
    model_dir: str,
    max_length: int = 384,
    batch_size: int = 128,
    device: str = "cuda",
) -> np.ndarray:
    """Mean-pooled, L2-normalised fp32 embeddings ``[N, D]`` of ``texts`` (in their order)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    # longest first: padding per batch stays small and a too-large batch fails at once
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**enc).last_hidden_state  # [B, L, D]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
    return out


def save_parts(emb: np.ndarray, out: Path, name: str) -> list[str]:
    """``out/<name>.partK.npy`` of at most :data:`MAX_BYTES` each; returns the file names."""
    rows = max(1, MAX_BYTES // (emb.shape[1] * emb.itemsize))
    names = []
    for k, s in enumerate(range(0, len(emb), rows)):
        f = f"{name}.part{k}.npy"
        np.save(out / f, np.ascontiguousarray(emb[s : s + rows]))
        names.append(f)
    return names


def join_parts(folder: Path, name: str) -> np.ndarray:
    """The rows of ``folder/<name>.part0.npy``, ``part1``, ... in order."""
    parts = sorted(folder.glob(f"{name}.part*.npy"), key=lambda p: int(p.stem.rsplit("part", 1)[1]))
    if not parts:
        raise FileNotFoundError(f"no {name}.part*.npy in {folder}")
    return np.concatenate([np.load(p) for p in parts])


def st_check(texts: list[str], model_dir: str, emb: np.ndarray, device: str, n: int) -> dict:
    """Cosine of ours vs sentence-transformers' own encode of the first ``n`` texts (if installed)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # only a cross-check; the embeddings stand without it
        return {"skipped": str(exc)}
    try:
        st = SentenceTransformer(model_dir, device=device)
        ref = st.encode(texts[:n], batch_size=64, convert_to_numpy=True, normalize_embeddings=False)
    except Exception as exc:  # noqa: BLE001 -- a cross-check must not lose the embeddings
        return {"failed": f"{type(exc).__name__}: {exc}"}
    cos = (ref * emb[:n]).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb[:n], axis=1)
    return {
        "n": n,
        "max_seq_length": int(st.max_seq_length),
        "modules": [type(m).__name__ for m in st],
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
        "max_abs_diff": float(np.abs(ref - emb[:n]).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face directory of all-mpnet-base-v2")
    ap.add_argument("--texts", nargs="+", required=True, help="JSON lists of prompt texts")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--rows", default="", help="only these rows (comma-separated), e.g. a CPU check"
    )
    ap.add_argument("--st-check", type=int, default=0, help="cross-check N texts against ST")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"max_length": a.max_length, "device": a.device, "tables": {}}
    for tf in a.texts:
        name = Path(tf).stem
        texts = json.loads(Path(tf).read_text())
        rows = [int(r) for r in a.rows.split(",")] if a.rows else list(range(len(texts)))
        sub = [texts[r] for r in rows]
        t0 = time.perf_counter()
        emb = embed(sub, a.model, a.max_length, a.batch_size, a.device)
        secs = time.perf_counter() - t0
        rep = {
            "n": len(sub),
            "dim": int(emb.shape[1]),
            "seconds": secs,
            "texts_sha1": hashlib.sha1("\n".join(texts).encode()).hexdigest(),
            "norm_min": float(np.linalg.norm(emb, axis=1).min()),
            "finite": bool(np.isfinite(emb).all()),
            "files": save_parts(emb, a.out, name) if not a.rows else [],
        }
        if a.rows:
            np.save(a.out / f"{name}.rows.npy", emb)
        if a.st_check:
            rep["st_check"] = st_check(sub, a.model, emb, a.device, min(a.st_check, len(sub)))
        report["tables"][name] = rep
        print(name, json.dumps(rep), flush=True)
    (a.out / "embed_report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
