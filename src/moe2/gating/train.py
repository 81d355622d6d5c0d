"""``moe2 train``: fit the gate once over all experts and write ``DIR/gating/``.

``DIR/gating/`` holds ``model.pt`` (state dict of :class:`~moe2.gating.net.GatingNet`),
``config.yaml`` (resolved), ``metrics.json`` (train/val/test routing metrics with the k-NN router
beside them), ``logits.parquet`` (every prompt × every expert, the input of selection),
``knn.npz`` (the k-NN baseline's training embeddings, reused by ``moe2 evaluate``),
``knn_scores.parquet`` (the k-NN router's predicted scores of every prompt, the kNN baseline of
selection), ``train_prompts.parquet`` (what the gate was trained on, :mod:`moe2.gating.heldout`) and
``meta.json``. ``metrics.json["quality"]`` holds the val and test figures beside every baseline with
paired bootstrap intervals (:mod:`moe2.gating.baselines`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from moe2.data.tables import SPLITS, OutcomeData, load_outcomes
from moe2.errors import ConfigError, DataError
from moe2.gating.datamodule import OutcomeDataModule
from moe2.gating.heldout import RECORD, TrainingRecord, write_record
from moe2.gating.knn import knn_scores
from moe2.gating.logits import CORRECT_FILE, CORRECT_OOF_FILE, GateLogits, write_logits
from moe2.gating.module import GateModule, calibration_error, routing_metrics
from moe2.gating.net import GatingNet, build_gate, cached_embeddings
from moe2.utils.instantiate import instantiate
from moe2.utils.io import atomic_path, write_json, write_text_atomic
from moe2.utils.lock import run_id
from moe2.utils.meta import run_metadata

log = logging.getLogger(__name__)


def check_gating_data(data: OutcomeData, where: str = "outcome table") -> None:
    """Refuse tables a gate cannot be trained on, with the fix in the message."""
    if data.n_experts < 2:
        raise DataError(
            f"{where}: has {data.n_experts} expert ({data.experts}); a gate routes between at least 2 experts. "
            "Harvest or import outcomes of more experts."
        )
    train = data.split_mask("train")
    if not train.any():
        raise DataError(
            f"{where}: no prompts in the 'train' split; re-import with split fractions that give train prompts"
        )
    if not data.split_mask("val").any():
        raise DataError(
            f"{where}: no prompts in the 'val' split (early stopping and checkpointing need it)"
        )
    present = set(np.unique(data.category_idx[train]).tolist())
    empty = [c for i, c in enumerate(data.categories) if i not in present]
    if empty:
        raise DataError(
            f"{where}: category(ies) {empty} have no training prompts, so the gate cannot learn to route them. "
            "Add training prompts for them, re-split, or drop those prompts."
        )
    s = data.scores[train]
    finite = np.isfinite(s)
    if not finite.any():
        raise DataError(f"{where}: no recorded scores in the train split")
    if not (s[finite] > 0).any():
        raise DataError(
            f"{where}: every training score is 0 (no expert is ever right), so there is nothing to route on. "
            "Check the import/harvest (scores must be 1 for a correct answer)."
        )


class EpochTimer(L.Callback):
    """Wall time of each training epoch's batches (validation excluded) -> ``seconds`` list."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def _stop(self, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:
            self._sync(pl_module)
            self.seconds.append(time.perf_counter() - self._t0)
            self._t0 = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


@dataclass
class FitResult:
    """What :func:`fit_gate` returns."""

    net: GatingNet
    base_embeddings: np.ndarray  # [P, D] pretrained-encoder embeddings (frozen features / k-NN)
    monitor: str
    best_score: float | None
    best_epoch: int | None
    epochs: int
    fit_seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    n_train: int = 0
    fit_rows: np.ndarray | None = None  # [P] bool: the prompts the gate was fitted on
    world_size: int = 1
    is_global_zero: bool = True
    device: str = "cpu"


def _embed_device(cfg: DictConfig) -> str:
    accel = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    return "cuda" if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda") else "cpu"


FIT_ON = ("train", "train+val")


def fit_rows(data: OutcomeData, fit_on: str) -> np.ndarray:
    """``[P]`` bool mask of the prompts a gate is fitted on: the train split, or train + val."""
    if fit_on not in FIT_ON:
        raise ConfigError(f"gating.fit_on={fit_on!r} is not one of {FIT_ON}")
    rows = data.split_mask("train")
    return rows | data.split_mask("val") if fit_on == "train+val" else rows


def oof_folds(value: Any, refit: bool) -> int:
    """``oof.folds``: ``auto`` is 5 for a gate refitted on train+val (its val logits are in-sample,
    so the selection needs out-of-fold ones) and 0 otherwise; an integer is taken as given."""
    if value is None:
        return 0
    if str(value) == "auto":
        return 5 if refit else 0
    try:
        folds = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"oof.folds={value!r}: give auto, 0 (off) or a number of folds >= 2"
        ) from None
    if folds == 1 or folds < 0:
        raise ConfigError(f"oof.folds={folds}: give auto, 0 (off) or a number of folds >= 2")
    return folds


def cv_folds(prompt_ids: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    """``[P]`` fold index in ``0..k-1`` of each prompt: a seeded hash of its id (stable, like splits)."""
    from moe2.data.tables import _split_uniform

    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    u = np.array([_split_uniform(str(p), seed) for p in prompt_ids])
    return np.minimum((u * k).astype(np.int64), k - 1)


def _refit_view(data: OutcomeData) -> OutcomeData:
    """``data`` with its val prompts relabelled train (a refit on train + val has no val split)."""
    return dataclasses.replace(data, splits=np.where(data.splits == "val", "train", data.splits))


#: Lightning's per-fit notices ("GPU available: False, used: False", "`Trainer.fit` stopped: ...")
_LIGHTNING_NOTICES = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


@contextlib.contextmanager
def quiet_lightning(quiet: bool = True) -> Any:
    """Lightning's INFO notices off for the block (warnings stay): an auxiliary fit (an
    out-of-fold gate, a subset gate of ``check-preserving``) says its own one line instead of
    Lightning's three."""
    loggers = [logging.getLogger(n) for n in _LIGHTNING_NOTICES] if quiet else []
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def fit_gate(
    data: OutcomeData,
    cfg: DictConfig,
    base_embeddings: np.ndarray | None = None,
    run_dir: str | Path | None = None,
    loggers: list[Any] | None = None,
    progress: bool | None = None,
    callbacks: list[Any] | None = None,
) -> FitResult:
    """Train a gate on ``data`` with the ``gating`` and ``trainer`` config of ``cfg``.

    With ``gating.fit_on: train`` (default), early stopping and checkpointing on ``gating.monitor``
    over the val split; the best checkpoint's weights are loaded back into the returned net. With
    ``gating.fit_on: train+val`` the gate is refitted on both splits for exactly
    ``trainer.max_epochs`` epochs (chosen beforehand by cross-validation; nothing is monitored) and
    keeps its last weights. With ``gating.knn_weight > 0`` a :class:`~moe2.gating.knn.KnnMemory` of
    the fitted prompts is attached to the returned net.

    Args:
        data: the outcome table (its experts are the gate's outputs).
        cfg: composed config with ``gating``, ``trainer``, ``seed`` and ``paths.cache``.
        base_embeddings: ``[P, D]`` pretrained-encoder embeddings of ``data.texts`` if already known.
        run_dir: Lightning's ``default_root_dir`` (checkpoints go to ``run_dir/checkpoints``).
        loggers: Lightning loggers (``None``: no logging).
        progress: show the progress bar (default: the trainer config's setting); ``False`` also
            silences Lightning's per-fit INFO notices (an auxiliary fit).
        callbacks: extra Lightning callbacks (e.g. a probe of held-out accuracy per epoch).
    """
    g = cfg.gating
    check_gating_data(data)
    fit_on = str(g.get("fit_on", "train"))
    rows = fit_rows(data, fit_on)
    refit = fit_on == "train+val"
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    net = build_gate(OmegaConf.to_container(g.net, resolve=True), data.experts, data.categories)
    bce_weight = float(g.loss.get("bce_weight", 0.0))
    if net.correct_head is not None and bce_weight <= 0:
        raise ConfigError(
            "gating.net.correctness=true trains its heads with the BCE term: set gating.loss.bce_weight > 0"
        )
    knn_weight = float(g.get("knn_weight", 0.0) or 0.0)
    if knn_weight and net.mode != "frozen":
        raise ConfigError(
            "gating.knn_weight > 0 needs gating.net.mode=frozen (the k-NN memory holds frozen-encoder embeddings)"
        )
    cache = OmegaConf.select(cfg, "paths.cache", default=None)
    if base_embeddings is None:
        t0 = time.perf_counter()
        base_embeddings = cached_embeddings(
            net,
            data.texts,
            cache,
            batch_size=int(g.get("embed_batch_size", 64)),
            device=_embed_device(cfg),
        )
        net.to("cpu")
        log.info("embeddings %s in %.1f s", base_embeddings.shape, time.perf_counter() - t0)
    frozen = net.mode == "frozen"
    dm = OutcomeDataModule(
        _refit_view(data) if refit else data,
        batch_size=int(g.batch_size),
        embeddings=base_embeddings if frozen else None,
        tokenizer=None if frozen else net.tokenizer,
        max_length=net.max_length,
        num_workers=int(g.get("num_workers", 0)),
    )
    module = GateModule(
        net,
        optimizer=instantiate(g.optimizer),
        scheduler=instantiate(g.scheduler) if g.get("scheduler") else None,
        tau=float(g.loss.tau),
        bce_weight=bce_weight,
        categories=data.categories,
        encoder_lr=g.get("encoder_lr"),
    )
    if frozen:
        module.strict_loading = False  # frozen encoder weights are left out of checkpoints
    monitor, mode = str(g.monitor), str(g.get("monitor_mode", "max"))
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    run_dir = (
        Path(run_dir)
        if run_dir is not None
        else Path(cfg.paths.artifacts) / "logs" / "gating" / run_id()  # own dir per run
    )
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    timer = EpochTimer()
    callbacks_: list[Any] = [timer] if refit else [ckpt, timer]
    callbacks_ += list(callbacks or [])
    if g.get("patience") and not refit:
        callbacks_.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(g.patience)))
    extra: dict[str, Any] = {
        "callbacks": callbacks_,
        "logger": loggers or False,
        "default_root_dir": str(run_dir),
    }
    if refit:
        # nothing is held out: no validation loop, no checkpoint choice, the last epoch's weights
        extra.update(limit_val_batches=0, enable_checkpointing=False)
    if progress is not None:
        extra["enable_progress_bar"] = progress
    with quiet_lightning(progress is False):
        trainer: L.Trainer = instantiate(cfg.trainer, **extra)
        threads = g.get("cpu_threads")
        saved_threads = torch.get_num_threads()
        if threads and trainer.strategy.root_device.type == "cpu":
            # a small head trains fastest on one thread; several spin-wait badly on a loaded machine
            torch.set_num_threads(int(threads))
        t0 = time.perf_counter()
        try:
            trainer.fit(module, datamodule=dm)
        finally:
            torch.set_num_threads(saved_threads)
    fit_seconds = time.perf_counter() - t0
    best_path = "" if refit else ckpt.best_model_path
    best_score = None if ckpt.best_model_score is None else float(ckpt.best_model_score)
    best_epoch = None
    if best_path and Path(best_path).is_file():
        saved = torch.load(best_path, map_location="cpu", weights_only=True)
        state, best_epoch = saved["state_dict"], int(saved.get("epoch", -1))
        missing, unexpected = module.load_state_dict(state, strict=False)
        bad = [k for k in missing if not (frozen and k.startswith("net.encoder."))]
        if bad or unexpected:
            raise DataError(
                f"{best_path}: checkpoint does not match the gate (missing {bad[:3]}, unexpected {unexpected[:3]})"
            )
    elif not refit and not trainer.fast_dev_run and trainer.is_global_zero:
        log.warning("no checkpoint was saved (is %s logged?); keeping the last weights", monitor)
    if knn_weight:
        from moe2.gating.knn import KnnMemory

        module.net.attach_knn(
            KnnMemory(
                base_embeddings[rows],
                data.scores[rows],
                k=int(g.get("knn_k", 20)),
                weight=knn_weight,
            )
        )
    device = str(trainer.strategy.root_device)
    return FitResult(
        net=module.net,
        base_embeddings=base_embeddings,
        monitor=monitor,
        best_score=best_score,
        best_epoch=best_epoch,
        epochs=int(trainer.current_epoch),
        fit_seconds=fit_seconds,
        epoch_seconds=timer.seconds,
        n_train=int(rows.sum()),
        fit_rows=rows,
        world_size=int(trainer.world_size),
        is_global_zero=bool(trainer.is_global_zero),
        device=device,
    )


@torch.no_grad()
def predict_logits(
    net: GatingNet,
    texts: list[str],
    base_embeddings: np.ndarray | None,
    device: str = "cpu",
    batch_size: int = 128,
    category_idx: np.ndarray | None = None,
    correctness: bool = False,
) -> np.ndarray:
    """Gate logits ``[P, E]`` of every prompt (frozen: from the cached embeddings).

    Args:
        category_idx: ``[P]`` indices into ``net.categories`` (``-1``: unknown), used by a gate with
            a category input (ignored otherwise); ``None``: every prompt's category is unknown.
        correctness: return the correctness heads' logits instead of the routing logits.
    """
    net.eval()
    if net.mode == "frozen" and base_embeddings is not None:
        net.to(device)
        return net.predict_embeddings(base_embeddings, category_idx, correctness=correctness)
    net.to(device)
    emb = net.encode_texts(texts, batch_size=batch_size, device=device)
    return net.predict_embeddings(emb, category_idx, correctness=correctness)


def knn_logits(
    train_emb: np.ndarray,
    train_scores: np.ndarray,
    train_ids: np.ndarray,
    query_emb: np.ndarray,
    query_ids: np.ndarray,
    k: int,
) -> np.ndarray:
    """k-NN predicted scores ``[Q, E]``; a query that is itself a training prompt is left out."""
    pos = {p: i for i, p in enumerate(train_ids)}
    own = np.array([pos.get(p, -1) for p in query_ids], dtype=np.int64)
    return knn_scores(train_emb, train_scores, query_emb, k=k, exclude_self=own)


def split_metrics(
    logits: np.ndarray, knn: np.ndarray | None, data: OutcomeData, splits: tuple[str, ...] = SPLITS
) -> dict[str, Any]:
    """Routing metrics of the gate (and the k-NN router, as ``<split>/knn_acc``) per split."""
    out: dict[str, Any] = {}
    for split in splits:
        rows = data.split_mask(split) if split in SPLITS else np.ones(data.n_prompts, bool)
        if not rows.any():
            continue
        out.update(
            routing_metrics(
                logits[rows],
                data.scores[rows],
                data.category_idx[rows],
                data.categories,
                prefix=split,
                experts=data.experts,
            )
        )
        if knn is not None:
            km = routing_metrics(knn[rows], data.scores[rows], prefix=split, per_category=False)
            out[f"{split}/knn_acc"] = km[f"{split}/router_acc"]
            out[f"{split}/knn_regret"] = km[f"{split}/regret"]
    return out


def correctness_metrics(
    correct_logits: np.ndarray, data: OutcomeData, splits: tuple[str, ...] = SPLITS
) -> dict[str, float]:
    """Calibration of the correctness heads per split: ``<split>/ece``, ``<split>/brier`` and the
    accuracy of routing by the heads alone (``<split>/correctness_router_acc``)."""
    probs = 1.0 / (1.0 + np.exp(-correct_logits.astype(np.float64)))
    out: dict[str, float] = {}
    for split in splits:
        rows = data.split_mask(split) if split in SPLITS else np.ones(data.n_prompts, bool)
        if not rows.any():
            continue
        s = data.scores[rows]
        valid = np.isfinite(s)
        out[f"{split}/ece"] = calibration_error(probs[rows], s)
        out[f"{split}/brier"] = float(((probs[rows] - np.nan_to_num(s)) ** 2)[valid].mean())
        out[f"{split}/correctness_router_acc"] = float(
            routing_metrics(correct_logits[rows], s, per_category=False)["router_acc"]
        )
    return out


def gate_input_collisions(net: Any, texts: list[str], categories: list[str]) -> dict[str, Any]:
    """Prompts the gate cannot tell apart: different texts that reach it as the same tokens.

    A prompt longer than ``gating.net.max_length`` tokens is cut on the side the gate's tokenizer
    carries (:mod:`moe2.format.tokenize`); when many prompts share a long preamble (few-shot
    examples, a template), the kept window can be that preamble alone, and every such prompt is
    one input. Returns ``{"max_length", "truncation_side", "truncated", "collisions",
    "by_category"}``: ``truncated`` prompts were cut, ``collisions`` prompts share their token ids
    with a prompt of other text (counted per category in ``by_category``).
    """
    tok, n = net.tokenizer, net.max_length
    keys = [tuple(i) for i in tok(list(texts), truncation=True, max_length=n)["input_ids"]]
    # only a prompt that fills the window may have been cut: those again, one token longer
    full = [t for t, k in zip(texts, keys, strict=True) if len(k) == n]
    over = tok(full, truncation=True, max_length=n + 1)["input_ids"] if full else []
    owners: dict[tuple[int, ...], set[str]] = {}
    for t, k in zip(texts, keys, strict=True):
        owners.setdefault(k, set()).add(t)
    hit = [len(owners[k]) > 1 for k in keys]
    by_cat: dict[str, int] = {}
    for h, c in zip(hit, categories, strict=True):
        if h:
            by_cat[c] = by_cat.get(c, 0) + 1
    return {
        "max_length": int(n),
        "truncation_side": str(tok.truncation_side),
        "truncated": int(sum(len(o) > n for o in over)),
        "collisions": int(sum(hit)),
        "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
    }


def warn_collisions(info: dict[str, Any], n_prompts: int, share: float = 0.01) -> str | None:
    """The warning for :func:`gate_input_collisions`'s result: ``None`` when at most ``share``
    of the prompts collide (a few near-duplicate questions are no reason to act)."""
    if info["collisions"] <= share * n_prompts:
        return None
    kept, other = ("first", "left") if info["truncation_side"] == "right" else ("last", "right")
    cats = ", ".join(f"{c} {n}" for c, n in list(info["by_category"].items())[:5])
    return (
        f"{info['collisions']} of {n_prompts} prompts reach the gate as the same tokens as a "
        f"prompt with other text ({cats}): only their {kept} {info['max_length']} tokens are "
        "kept and those are identical, so the gate cannot tell them apart (a preamble or an "
        "ending that all of them share, such as few-shot examples or a template, fills the "
        f"window). Set gating.net.truncation_side={other} or raise gating.net.max_length"
    )


def _checked_oof_folds(cfg: DictConfig, data: OutcomeData, refit: bool) -> int:
    """``oof.folds`` resolved, and checked against the table before any gate trains: a fold whose
    training part lacks a category (or val prompts) fails at once when the folds were asked for,
    and turns the OOF logits off with a warning under ``oof.folds=auto``."""
    from moe2.gating.crossfit import unfit_fold

    value = OmegaConf.select(cfg, "oof.folds", default=0)
    folds = oof_folds(value, refit)
    if not folds:
        return 0
    why = unfit_fold(
        data, folds, int(OmegaConf.select(cfg, "oof.seed", default=0)), check_gating_data
    )
    if why is None:
        return folds
    if str(value) != "auto":
        raise ConfigError(
            f"oof.folds={folds}: {why}. Use fewer folds, add prompts to the small categories, or "
            "set oof.folds=0 (then selection.split=val, in-sample for a gate refitted on train+val)"
        )
    log.warning(
        "oof.folds=auto: no out-of-fold logits: %s. The selection falls back to val, in-sample "
        "for this refitted gate; set oof.folds=2..4 or add prompts to the small categories",
        why,
    )
    return 0


def train_gate(cfg: DictConfig) -> dict[str, Any]:
    """Train the gate on ``paths.outcomes`` and write ``paths.gating``; returns the metrics.

    Args:
        cfg: the composed ``conf/train.yaml`` (groups paths, gating, trainer, logger).

    Returns:
        The metrics written to ``metrics.json`` (empty on non-zero DDP ranks).
    """
    from moe2.gating.loggers import build_loggers

    if cfg.gating.get("monitor") is None:
        raise ConfigError("gating.monitor is required (e.g. val/router_acc)")
    data = load_outcomes(cfg.paths.outcomes)
    check_gating_data(data, str(cfg.paths.outcomes))
    refit = str(cfg.gating.get("fit_on", "train")) == "train+val"
    folds = _checked_oof_folds(cfg, data, refit)
    # checkpoints of this run only: concurrent or earlier runs keep theirs
    run_dir = Path(cfg.paths.artifacts) / "logs" / "gating" / run_id()
    loggers = build_loggers(cfg.get("logger"))
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    res = fit_gate(data, cfg, run_dir=run_dir, loggers=loggers)
    if not res.is_global_zero:
        return {}
    device = "cuda" if res.device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    cat_idx = data.category_idx
    logits = predict_logits(
        res.net, data.texts, res.base_embeddings, device=device, category_idx=cat_idx
    )
    infer_seconds = time.perf_counter() - t0
    # the k-NN baseline sees the same training prompts as the gate
    train_rows = res.fit_rows if res.fit_rows is not None else data.split_mask("train")
    k = int(cfg.gating.get("knn_k", 20))
    knn = knn_logits(
        res.base_embeddings[train_rows],
        data.scores[train_rows],
        data.prompt_ids[train_rows],
        res.base_embeddings,
        data.prompt_ids,
        k,
    )
    metrics: dict[str, Any] = split_metrics(logits, knn, data)
    names = [data.categories[i] for i in data.category_idx]
    metrics["gate_inputs"] = gate_input_collisions(res.net, data.texts, names)
    if msg := warn_collisions(metrics["gate_inputs"], data.n_prompts):
        log.warning(msg)
    correct = None
    if res.net.correct_head is not None:
        correct = predict_logits(
            res.net, data.texts, res.base_embeddings, device, category_idx=cat_idx, correctness=True
        )
        metrics.update(correctness_metrics(correct, data))
    from moe2.gating.baselines import flat_metrics, print_report, split_quality

    # a refitted gate has seen val: its baselines are fitted on train+val and only test is held out
    quality = split_quality(
        _refit_view(data) if refit else data,
        logits,
        knn,
        splits=("test",) if refit else ("val", "test"),
        seed=int(cfg.get("seed", 0)),
    )
    metrics["quality"] = quality
    oof = oof_correct = None
    if folds and res.world_size > 1:
        # the fold gates would need every rank again; this process is rank 0 alone now
        log.warning("oof.folds=%d skipped: out-of-fold logits need a single-process run", folds)
        folds = 0
    if folds:
        from moe2.gating.crossfit import oof_logits

        oof_rows, oof_z, metrics["oof"], oof_c = oof_logits(
            data,
            cfg,
            res.base_embeddings,
            folds,
            int(OmegaConf.select(cfg, "oof.seed", default=0)),
            fit=fit_gate,
            predict=predict_logits,
        )
        oof = GateLogits.for_data(data.select(oof_rows), oof_z, data.experts)
        if oof_c is not None:
            oof_correct = GateLogits.for_data(data.select(oof_rows), oof_c, data.experts)
    per_epoch = float(np.median(res.epoch_seconds)) if res.epoch_seconds else None
    timing = {
        "fit_seconds": res.fit_seconds,
        "epochs": res.epochs,
        "epoch_seconds_median": per_epoch,
        "train_samples_per_s": (res.n_train / per_epoch) if per_epoch else None,
        "predict_seconds": infer_seconds,
        "device": res.device,
        "world_size": res.world_size,
    }
    metrics.update(
        {
            "monitor": res.monitor,
            "best_score": res.best_score,
            "best_epoch": res.best_epoch,
            "knn_k": k,
            "timing": timing,
        }
    )
    # after ddp_spawn the main process's logger objects are stale copies (the workers wrote the run),
    # so final metrics go to the trackers only for single-process runs; metrics.json always has them
    if res.world_size == 1:
        for lg in loggers:
            lg.log_metrics({f"final/{k2}": v for k2, v in metrics.items() if isinstance(v, float)})
            for split, rep in quality.items():
                lg.log_metrics(flat_metrics(rep, f"final/{split}"))
            lg.finalize("success")

    gating_dir = Path(cfg.paths.gating)
    net = res.net.to("cpu")
    with atomic_path(gating_dir) as tmp:
        tmp.mkdir()
        # serialise in memory, then write: a full disk is then an OSError (ENOSPC, one clear
        # error) rather than torch's RuntimeError from inside its zip writer
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        (tmp / "model.pt").write_bytes(buf.getvalue())
        write_text_atomic(tmp / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(tmp / "metrics.json", metrics)
        write_logits(
            tmp / "logits.parquet",
            GateLogits.for_data(data, logits, data.experts),
        )
        write_logits(tmp / "knn_scores.parquet", GateLogits.for_data(data, knn, data.experts))
        # the correctness heads' logits (sigmoid = P(correct)): cost-aware routing's quality q
        if correct is not None:
            write_logits(tmp / CORRECT_FILE, GateLogits.for_data(data, correct, data.experts))
        write_record(tmp / RECORD, TrainingRecord.of(_refit_view(data) if refit else data))
        if oof is not None:
            from moe2.gating.crossfit import OOF_FILE

            write_logits(tmp / OOF_FILE, oof)
        if oof_correct is not None:
            write_logits(tmp / CORRECT_OOF_FILE, oof_correct)
        np.savez_compressed(
            tmp / "knn.npz",
            embeddings=res.base_embeddings[train_rows].astype(np.float16),
            scores=data.scores[train_rows],
            prompt_ids=data.prompt_ids[train_rows].astype(str),
            k=k,
        )
        inputs = {k2: v for k2, v in (data.meta.get("files") or {}).items()}
        write_json(
            tmp / "meta.json",
            run_metadata(
                "train",
                inputs={f"outcomes/{k2}": v for k2, v in inputs.items()},
                experts=data.experts,
                categories=data.categories,
                gate=net.spec,
                optimized_metric={
                    "name": res.monitor,
                    "mode": str(cfg.gating.get("monitor_mode", "max")),
                    "best": res.best_score,
                },
                timing=timing,
                n_prompts=data.n_prompts,
            ),
        )
    acc = {
        k: float("nan") if v is None else v
        for k, v in ((quality.get("test") or {}).get("accuracy") or {}).items()
    }
    log.info(
        "gate written to %s: test router %.4f | best single (chosen on %s) %.4f | lookup %.4f | "
        "kNN %.4f | oracle %.4f",
        gating_dir,
        acc.get("router", float("nan")),
        "train+val" if refit else "train",
        acc.get("best_single", float("nan")),
        acc.get("lookup", float("nan")),
        acc.get("knn", float("nan")),
        acc.get("oracle", float("nan")),
    )
    for split, rep in quality.items():
        print_report(rep, f"gate on the {split} split (baselines fitted on train)")
    return metrics
