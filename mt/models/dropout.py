"""Dropout that is cheap on a CPU.

torch draws a CPU dropout mask with `bernoulli_`, one Mersenne-Twister number and a float
comparison per element, on one thread, and in the small CPU Transformer's training step
(recipes/multi30k/transformer-cpu.yaml) that was a large share of the time (docs/performance.md).
Here a mask comes
from random 64-bit integers, four 15-bit draws from each: an element is dropped when its draw is
below round(p * 2^15), so the probability is p rounded to a multiple of 1/32768 (0.1 becomes
3277/32768 = 0.100006) and the kept elements are scaled by 1 / (1 - that probability), which keeps
the expectation exact. The integers come from torch's default CPU generator, so `torch.manual_seed`
and a checkpoint's saved RNG state reproduce the masks, as they do with `F.dropout`.

On other devices (CUDA draws its masks in parallel, with Philox) the module is `F.dropout`.
benchmarks/train_speed.py --ablations times both on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 15  # draws of 15 bits: the 16-bit lanes of a random non-negative int64, their top bit cleared
_LANES = 4  # 16-bit lanes in one int64


def keep_mask(shape: torch.Size, p: float, device: torch.device | None = None) -> tuple[Tensor, float]:
    """A boolean mask of `shape`, False with probability p rounded to 1/2^15, and the probability
    used. The random numbers come from torch's default generator for `device` (CPU)."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=device).random_()
    draws = words.view(torch.int16)[:n].view(shape).bitwise_and_((1 << _BITS) - 1)
    threshold = round(p * (1 << _BITS))
    return draws >= threshold, threshold / (1 << _BITS)


class _MaskedScale(torch.autograd.Function):
    """x * mask, the mask holding 0 or the scale; the gradient is masked the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        mask = keep.to(x.dtype).mul_(scale)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), with the cheap mask on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep, used = keep_mask(x.shape, p)
    if used == 0.0:  # p below 1 / 2^16: nothing is dropped
        return x
    return _MaskedScale.apply(x, keep, 1.0 / (1.0 - used))


class Dropout(nn.Module):
    """nn.Dropout with `dropout`'s mask on the CPU (no parameters: checkpoints are unchanged)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
