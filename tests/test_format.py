"""The bundle-format module: one copy of what the exporter writes and the runtime reads.

Checks the import boundary (the edge side imports no build code; the format imports neither side),
statically over every import statement (lazy ones inside functions included), and the one
tokenisation policy shared by training, export and serving.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(directory: Path) -> dict[str, set[str]]:
    """``{file: modules it imports}`` for every ``.py`` under ``directory``."""
    out: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("*.py")):
        mods: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods.add(node.module)
        out[str(path.relative_to(ROOT))] = mods
    return out


@pytest.mark.parametrize(
    ("directory", "forbidden"),
    [
        ("src/moe2/runtime", ("moe2.export",)),
        ("src/moe2/format", ("moe2.export", "moe2.runtime")),
    ],
)
def test_import_boundary(directory: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        f: sorted(m for m in mods if m.startswith(forbidden))
        for f, mods in _imports(ROOT / directory).items()
    }
    assert not {f: m for f, m in bad.items() if m}


def test_gate_policy_is_the_same_for_training_and_serving() -> None:
    """GatingNet's training-time tokenisation and OrtGate's serve-time one give the same ids."""
    from bundle_fixtures import PARITY_PROMPTS, tiny_tokenizer

    from moe2.format.sessions import OrtGate
    from moe2.format.tokenize import encode_gate

    tok = tiny_tokenizer()
    served = OrtGate(None, tok, ["a"], max_length=5).encode(PARITY_PROMPTS)
    trained = encode_gate(tok, PARITY_PROMPTS, 5, "pt")
    assert served["input_ids"].dtype == np.int64 and served["input_ids"].shape == (3, 5)
    for k in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(served[k], trained[k].numpy())


def test_prompt_and_option_ids() -> None:
    from bundle_fixtures import tiny_tokenizer

    from moe2.format.tokenize import option_ids, prompt_ids

    tok = tiny_tokenizer()
    # no chat template on this tokenizer: plain text with the special tokens ([CLS] first)
    ids = prompt_ids(tok, "add two and three", chat_template=True)
    assert ids == tok("add two and three")["input_ids"] and ids[0] == tok.cls_token_id
    assert option_ids(tok, "three") == tok("three", add_special_tokens=False)["input_ids"]
