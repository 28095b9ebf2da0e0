"""train.amp=auto: which precision trains *this* model faster on *this* device, float32 or bf16
autocast, found by timing a few forward and backward passes of each on the run's first batches.

Whether bf16 pays depends on both: on a CPU with AVX512-BF16 or AMX a Transformer base trains
faster under bf16 autocast, while a small model on the same CPU trains slower (the casts around
each small matrix product cost more than the products save; figures in docs/performance.md). The probe leaves no
trace on training: no optimizer step, gradients cleared, the random number generators restored,
so a run with the probe trains exactly as one told the winning precision. The choice is recorded
in the run (meta.json, "amp") and a resume keeps it: resumed training stays bitwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from mt.data.batching import Batch
from mt.device import cpu_has_native_bf16
from mt.train.optim import label_smoothed_loss

#: below this many parameters the probe is not run and float32 is kept: the matrix products are too
#: small for bf16 to pay (even the 2M-parameter CPU recipe's model trains slower under bf16 autocast,
#: docs/performance.md), and the probe would cost a noticeable share of a short run
PROBE_MIN_PARAMETERS = 1_000_000
#: timed rounds per precision (alternating, the faster round counts) after one warm-up round each
PROBE_ROUNDS = 3
#: batches per round
PROBE_BATCHES = 2


@dataclass(frozen=True)
class AmpChoice:
    """The precision training uses ("none": float32, "bf16", "fp16") and why."""

    amp: str
    reason: str
    #: target tokens per second of the probe's forward and backward passes, per precision
    rates: dict[str, float] = field(default_factory=dict)

    def record(self, setting: str) -> dict:
        """What meta.json keeps under "amp"."""
        out = {"setting": setting, "used": self.amp, "reason": self.reason}
        if self.rates:
            out["probe_tokens_per_s"] = {k: round(v, 1) for k, v in self.rates.items()}
        return out

    def describe(self) -> str:
        rates = ", ".join(f"{'float32' if k == 'none' else k} {v:,.0f}" for k, v in self.rates.items())
        name = "float32" if self.amp == "none" else self.amp
        return f"precision {name} (train.amp=auto: {self.reason}" + (f"; target tokens/s {rates})" if rates else ")")


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products in hardware (else bf16 is emulated and slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16() is True
    return False


def choose_amp(model: nn.Module, batches: Sequence[Batch], device: torch.device,
               probe: Callable[..., dict[str, float]] | None = None) -> AmpChoice:
    """The faster of float32 and bf16 autocast for training `model` on `device` (train.amp=auto).
    `probe(model, batches, device)` returns target tokens/s per precision ("none", "bf16")."""
    if not bf16_is_native(device):
        return AmpChoice("none", f"{device.type} has no native bf16")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params < PROBE_MIN_PARAMETERS:
        return AmpChoice("none", f"{n_params / 1e6:.2f}M parameters, under the "
                                 f"{PROBE_MIN_PARAMETERS / 1e6:g}M where bf16 can pay")
    rates = (probe or probe_rates)(model, batches, device)
    faster = max(rates, key=rates.get)
    return AmpChoice(faster, "faster in the probe", rates)


def probe_rates(model: nn.Module, batches: Sequence[Batch], device: torch.device,
                rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """Target tokens/s of forward and backward passes over `batches` in float32 ("none") and under
    bf16 autocast ("bf16"): one warm-up round each, then `rounds` alternating rounds, the fastest
    counting. No optimizer step; gradients are cleared and the RNGs restored afterwards."""
    batches = [b.to(device) for b in batches]
    tokens = sum(b.ntokens for b in batches)
    best = {"none": float("inf"), "bf16": float("inf")}
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for r in range(rounds + 1):
            for name in ("none", "bf16"):
                start = time.perf_counter()
                for batch in batches:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                        logits = model(batch.src, batch.src_lengths, batch.tgt_in)
                    label_smoothed_loss(logits, batch.tgt_out, 0.0).backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
                if r:  # round 0 warms up
                    best[name] = min(best[name], elapsed)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: tokens / max(t, 1e-9) for name, t in best.items()}
