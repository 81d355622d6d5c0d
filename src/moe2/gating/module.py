"""LightningModule of the gate, its loss and the routing metrics shared by train/evaluate/check.

Loss (DESIGN.md §1): cross-entropy between ``softmax(h(x))`` and the soft target
``q(e|x) ∝ exp(s[x,e]/τ)`` over the experts with a recorded outcome, plus an optional per-expert
binary cross-entropy ``BCE(h(x)_e, s[x,e])``.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from moe2.gating.net import GatingNet

# --------------------------------------------------------------------------- loss


def soft_targets(scores: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """``q(e|x) ∝ exp(s[x,e]/τ)`` over valid experts, ``[B, E]`` (0 where invalid)."""
    z = (scores / tau).masked_fill(~valid, float("-inf"))
    q = torch.softmax(z, dim=-1)
    return torch.nan_to_num(q, nan=0.0)  # rows with no valid expert -> all zero


def gate_loss(
    logits: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    tau: float,
    bce_weight: float = 0.0,
    correct_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft-target cross-entropy (+ ``bce_weight`` × per-expert BCE) over prompts with outcomes.

    Args:
        logits: ``[B, E]`` gate logits.
        scores: ``[B, E]`` quality in [0, 1] (any value where ``valid`` is False).
        valid: ``[B, E]`` bool, True where the outcome was recorded.
        tau: target temperature (small τ -> target concentrates on the best experts).
        bce_weight: weight of the per-expert binary cross-entropy term.
        correct_logits: ``[B, E]`` logits of separate correctness heads; the BCE term applies to them
            (``None``: to ``logits`` themselves).
    """
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    q = soft_targets(scores, valid, tau)  # [B, E]
    # missing experts are excluded from the softmax rather than pushed down
    logp = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    ce = -(q * torch.where(valid, logp, torch.zeros_like(logp))).sum(-1)  # [B]
    has = valid.any(-1)  # [B]
    n = has.sum().clamp_min(1)
    loss = (ce * has).sum() / n
    if bce_weight:
        bce = nn.functional.binary_cross_entropy_with_logits(
            logits if correct_logits is None else correct_logits, scores, reduction="none"
        )  # [B, E]
        loss = loss + bce_weight * (bce * valid).sum() / valid.sum().clamp_min(1)
    return loss


# --------------------------------------------------------------------------- metrics


def routing_metrics(
    logits: np.ndarray,
    scores: np.ndarray,
    category_idx: np.ndarray | None = None,
    categories: Sequence[str] | None = None,
    prefix: str = "",
    experts: Sequence[str] | None = None,
    per_category: bool = True,
) -> dict[str, float | str]:
    """Routing quality of ``logits`` on outcomes ``scores`` (both ``[P, E]``; NaN score = missing).

    - ``router_acc``: mean score of the top-1 expert (argmax over experts with an outcome);
    - ``best_single_insample_acc``: best mean score of any one expert on these prompts, the expert
      chosen *on the same prompts* (an upper bound; the best single baseline of the quality reports,
      ``quality.<split>.accuracy.best_single``, is chosen on the training split);
    - ``oracle_acc``: mean of the best score per prompt; ``regret`` = oracle - router;
    - ``cat/<c>/router_acc``, ``cat/<c>/best_single_insample_acc``, ``cat/<c>/oracle_acc`` per
      category.
    """
    p = f"{prefix}/" if prefix else ""
    out: dict[str, float | str] = {}
    if len(scores) == 0:
        return out
    valid = np.isfinite(scores)
    s = np.where(valid, scores, 0.0)
    masked = np.where(valid, logits, -np.inf)
    choice = masked.argmax(1)  # [P]
    routed = s[np.arange(len(s)), choice]  # [P]
    per_expert = s.sum(0) / np.maximum(valid.sum(0), 1)  # [E]
    best = int(per_expert.argmax())
    oracle = s.max(1)
    out[f"{p}router_acc"] = float(routed.mean())
    out[f"{p}best_single_insample_acc"] = float(per_expert[best])
    if experts is not None:
        out[f"{p}best_single_insample_expert"] = str(experts[best])
    out[f"{p}oracle_acc"] = float(oracle.mean())
    out[f"{p}regret"] = float(oracle.mean() - routed.mean())
    out[f"{p}n"] = float(len(s))
    if per_category and category_idx is not None and categories is not None:
        for c, name in enumerate(categories):
            rows = category_idx == c
            if not rows.any():
                continue
            out[f"{p}cat/{name}/router_acc"] = float(routed[rows].mean())
            pe = s[rows].sum(0) / np.maximum(valid[rows].sum(0), 1)
            out[f"{p}cat/{name}/best_single_insample_acc"] = float(pe.max())
            out[f"{p}cat/{name}/oracle_acc"] = float(oracle[rows].mean())
    return out


def calibration_error(probs: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of predicted correctness ``probs`` ``[P, E]`` against ``scores``.

    Over every (prompt, expert) pair with a recorded score: pairs are put in ``bins`` equal-width
    bins of predicted probability; ECE = Σ_b (n_b / n) · |mean predicted_b − mean score_b|.
    """
    valid = np.isfinite(scores)
    p = np.asarray(probs, dtype=np.float64)[valid]
    s = np.asarray(scores, dtype=np.float64)[valid]
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(
        np.bincount(which, p, bins) - np.bincount(which, s, bins)
    )  # |Σ pred − Σ score| per bin
    return float(gap.sum() / len(p)) if n.sum() else float("nan")


def soft_target_loss_np(logits: np.ndarray, scores: np.ndarray, tau: float) -> float:
    """:func:`gate_loss` (no BCE) on numpy arrays — the soft-target CE of a fixed gate."""
    valid = torch.from_numpy(np.isfinite(scores))
    s = torch.from_numpy(np.nan_to_num(scores.astype(np.float32)))
    return float(gate_loss(torch.from_numpy(logits.astype(np.float32)), s, valid, tau))


# --------------------------------------------------------------------------- module


_GLOO_EXIT_HOOK = False


def _destroy_gloo_group_at_exit() -> None:
    global _GLOO_EXIT_HOOK
    import torch.distributed as dist

    if _GLOO_EXIT_HOOK or not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        from lightning.fabric.utilities.distributed import _destroy_dist_connection

        atexit.register(_destroy_dist_connection)
        _GLOO_EXIT_HOOK = True


class GateModule(L.LightningModule):
    """Trains a :class:`GatingNet` on outcome batches.

    Batches (from :class:`moe2.gating.datamodule.OutcomeDataModule`) hold ``scores [B, E]``,
    ``valid [B, E]``, ``category [B]``, ``index [B]`` and either ``embedding [B, D]`` (frozen mode)
    or ``input_ids``/``attention_mask`` ``[B, L]``.

    Args:
        net: the gate.
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_: true``).
        scheduler: partial of a torch LR scheduler, or ``None``.
        tau: soft-target temperature.
        bce_weight: weight of the per-expert BCE term.
        categories: category names, for per-category metrics.
        encoder_lr: learning rate of the encoder's trainable weights (fine-tuning, LoRA adapters)
            when it should differ from the head's (the optimizer's ``lr``); ``None``: one rate.
    """

    def __init__(
        self,
        net: GatingNet,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        tau: float = 0.1,
        bce_weight: float = 0.0,
        categories: Sequence[str] = (),
        encoder_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.encoder_lr = None if encoder_lr is None else float(encoder_lr)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tau = float(tau)
        self.bce_weight = float(bce_weight)
        self.categories = list(categories)
        self._buffers: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def setup(self, stage: str) -> None:
        """In each worker: make sure a gloo process group is torn down before the process exits.

        Lightning destroys NCCL groups at exit but not gloo ones (CPU DDP); a gloo group left to
        interpreter shutdown can abort a spawned worker ("terminate called without an active
        exception") after training has finished.
        """
        _destroy_gloo_group_at_exit()

    def outputs(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Softmax-head logits, correctness logits (or ``None``) and routing logits, each ``[B, E]``."""
        emb = batch.get("embedding")
        if emb is None:
            emb = self.net.embed(batch["input_ids"], batch["attention_mask"])
        cat = batch.get("category") if self.net.categories else None
        head, correct = self.net.head_outputs(emb, cat)
        return head, correct, self.net.routing_logits(head, correct, emb)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Routing logits ``[B, E]`` of a batch."""
        return self.outputs(batch)[2]

    def _loss(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        head, correct, routing = self.outputs(batch)
        loss = gate_loss(
            head, batch["scores"], batch["valid"], self.tau, self.bce_weight, correct_logits=correct
        )
        return loss, routing, correct

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        bs = len(batch["scores"])
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=bs,
            sync_dist=True,
        )
        return loss

    def _eval_step(self, split: str, batch: dict[str, torch.Tensor]) -> None:
        loss, logits, _ = self._loss(batch)
        self.log(
            f"{split}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=len(logits),
            sync_dist=True,
        )
        scores = batch["scores"].masked_fill(~batch["valid"], float("nan"))
        self._buffers.setdefault(split, []).append(
            (logits.detach().float(), scores.float(), batch["category"])
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, split: str) -> None:
        parts = self._buffers.pop(split, [])
        if not parts:
            return
        logits = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        cats = torch.cat([p[2] for p in parts])
        if self.trainer.world_size > 1:
            # every rank holds its DistributedSampler shard: gather them so metrics cover the split
            # (the sampler pads by repeating a few prompts; their effect is ≤ world_size / n)
            logits = self.all_gather(logits).flatten(0, 1)
            scores = self.all_gather(scores).flatten(0, 1)
            cats = self.all_gather(cats).flatten(0, 1)
        m = routing_metrics(
            logits.cpu().numpy(),
            scores.cpu().numpy(),
            cats.cpu().numpy(),
            self.categories,
            prefix=split,
        )
        # identical on every rank after the gather, so no further reduction is needed
        self.log_dict(
            {k: v for k, v in m.items() if isinstance(v, float) and not k.endswith("/n")},
            sync_dist=False,
        )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a frozen encoder never changes: keep it out of every checkpoint (MiniLM is 90 MB)
        if self.net.mode == "frozen":
            sd = checkpoint["state_dict"]
            for key in [k for k in sd if k.startswith("net.encoder.")]:
                del sd[key]

    def configure_optimizers(self) -> Any:
        params: Any = [p for p in self.net.parameters() if p.requires_grad]
        if self.encoder_lr is not None:
            # two groups: the encoder's trainable weights at encoder_lr, the rest at the
            # optimizer's own lr (a head trained from scratch wants a larger one)
            enc = {id(p) for p in self.net.encoder.parameters() if p.requires_grad}
            params = [
                {"params": [p for p in params if id(p) not in enc]},
                {"params": [p for p in params if id(p) in enc], "lr": self.encoder_lr},
            ]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }
