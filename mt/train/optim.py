"""Optimisation: the label-smoothed loss, the optimizer and its learning-rate schedules, and
`TrainStep`, one optimizer update over a group of batches (the trainer's, and the benchmarks')."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mt import MTError
from mt.config import Config, TrainConfig
from mt.data.batching import Batch
from mt.data.vocab import PAD_ID
from mt.train.world import World


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Sum over real target tokens of the label-smoothed cross-entropy (padding ignored)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
        reduction="sum",
    )


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    kwargs = dict(lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    # fused kernels (CUDA, and CPU since torch 2.4): one kernel over all parameters instead of one
    # per operation and parameter group (benchmarks/train_speed.py --ablations compares fused,
    # foreach and the for-loop)
    if device.type in ("cuda", "cpu"):
        try:
            return cls(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, TypeError):  # a dtype or build without fused support
            pass
    return cls(model.parameters(), **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """Per-step scheduler (torch.optim.lr_scheduler), plus a ReduceLROnPlateau for schedule=plateau."""
    t = cfg.train
    sched = torch.optim.lr_scheduler
    warmup = max(t.warmup, 0)
    # Every schedule warms up the same way: update k (1-based) of the first `warmup` updates uses
    # lr * k / warmup, so the full lr is reached at update `warmup`. The scheduler's counter is the
    # number of updates already done, so update k sees last_epoch = k - 1.
    if t.schedule == "inverse_sqrt":
        # Vaswani et al. (Noam) / fairseq inverse_sqrt: lr * min(k / warmup, sqrt(warmup / k))
        def factor(done: int) -> float:
            k = done + 1
            if warmup and k < warmup:
                return k / warmup
            return math.sqrt(max(warmup, 1) / k)

        return sched.LambdaLR(optimizer, factor), None
    # LinearLR from 1/warmup at k = 1 to 1 at k = warmup (its counter k - 1 runs 0 .. warmup - 1)
    start = 1.0 / warmup if warmup else 1.0
    warm = sched.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=max(warmup - 1, 0))
    if t.schedule == "cosine" and t.horizon == "minutes":
        return sched.LambdaLR(optimizer, CosineToHorizon(warmup, t.max_steps, t.min_lr / t.lr)), None
    if t.schedule == "cosine":
        cosine = sched.CosineAnnealingLR(optimizer, T_max=max(t.max_steps - warmup, 1), eta_min=t.min_lr)
        return sched.SequentialLR(optimizer, [warm, cosine], milestones=[max(warmup, 1)]), None
    if t.schedule == "plateau":
        mode = "min" if t.metric == "loss" else "max"
        plateau = sched.ReduceLROnPlateau(
            optimizer, mode=mode, factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
        )
        return warm, plateau
    return warm, None  # constant after warmup


class CosineToHorizon:
    """schedule=cosine with horizon=minutes, as a LambdaLR factor of update k (1-based): k / warmup
    during the warm-up, then a cosine from 1 to min_lr / lr that ends at update `steps`, the
    horizon, fixed by the trainer once it has timed its first updates (`fix`), before the warm-up
    ends. Until then (a run whose warm-up is shorter than its timing) the rate stays at its peak.
    A callable object rather than a function, so that LambdaLR's state_dict carries the fixed
    horizon in every checkpoint and a resume decays to the same step."""

    def __init__(self, warmup: int, max_steps: int, floor: float) -> None:
        self.warmup, self.max_steps, self.floor = warmup, max_steps, floor
        self.steps: int | None = None  # the horizon, once fixed

    def fix(self, steps: int) -> None:
        self.steps = min(max(steps, 1), self.max_steps)

    def __call__(self, done: int) -> float:
        k = done + 1
        if self.warmup and k <= self.warmup:
            return k / self.warmup
        if self.steps is None:
            return 1.0
        # as schedule=cosine over max_steps = steps: update warmup + 1 at the peak, the last just above the floor
        progress = min((k - 1 - self.warmup) / max(self.steps - self.warmup, 1), 1.0)
        return self.floor + (1 - self.floor) * (1 + math.cos(math.pi * progress)) / 2


@dataclass
class Optimization:
    """The optimizer and what drives it, travelling as one: per-step scheduler, the plateau scheduler
    of schedule=plateau (stepped by validation scores), the fp16 loss scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    plateau: Any  # ReduceLROnPlateau or None
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, model: nn.Module, cfg: Config, device: torch.device) -> "Optimization":
        optimizer = build_optimizer(model, cfg, device)
        scheduler, plateau = build_scheduler(optimizer, cfg)
        return cls(optimizer, scheduler, plateau, torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16"))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def horizon(self) -> CosineToHorizon | None:
        """The schedule whose end the trainer fixes from its timing (train.horizon=minutes), if any."""
        fns = getattr(self.scheduler, "lr_lambdas", None) or [None]
        return fns[0] if isinstance(fns[0], CosineToHorizon) else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.scaler.load_state_dict(state["scaler"])


class StepResult(NamedTuple):
    loss: torch.Tensor  # the summed loss, a tensor on the device: read only when logged (no sync per step)
    tokens: int  # target tokens of this process's batches
    stepped: bool  # False when fp16 loss scaling skipped the update (inf/nan gradients)


class TrainStep:
    """One optimizer update over `batches` (gradient accumulation): autocast (train.amp), the
    label-smoothed loss, backward, clipping (train.clip_norm), the optimizer step. The caller steps
    its learning-rate schedule when the result says the optimizer stepped."""

    def __init__(self, train: TrainConfig, world: World) -> None:
        if train.amp == "fp16" and world.device.type != "cuda":
            raise MTError("train.amp=fp16 needs a CUDA device (use bf16 or none on CPU)")
        self.train, self.world = train, world
        self.amp: torch.dtype | None = None
        self.use(train.amp)  # auto: float32 until the trainer has chosen (mt.train.precision)

    def use(self, amp: str) -> None:
        """Train in `amp`: none (float32), bf16 or fp16 autocast."""
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 batches: list[Batch]) -> StepResult:
        t, world, device = self.train, self.world, self.world.device
        model.train()
        total_tokens = sum(b.ntokens for b in batches)
        # the loss is a sum over tokens divided by the tokens of the whole update; under DDP that is
        # the tokens of all replicas, times the replicas (DDP averages the gradients), so that every
        # token weighs the same whatever replica it was on
        denom = world.total(total_tokens) / world.size if world.size > 1 else total_tokens
        loss_sum = torch.zeros((), device=device)
        for i, batch in enumerate(batches):
            batch = batch.to(device)
            sync = i == len(batches) - 1 or world.size == 1
            ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else nullcontext()
            with ctx:
                with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                    logits = model(batch.src, batch.src_lengths, batch.tgt_in)
                loss = label_smoothed_loss(logits, batch.tgt_out, t.label_smoothing)
                scaler.scale(loss / denom).backward()
            loss_sum += loss.detach().float()
        if t.clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        stepped = scale is None or scaler.get_scale() >= scale  # the scale drops exactly when a step is skipped
        return StepResult(loss_sum, total_tokens, stepped)
