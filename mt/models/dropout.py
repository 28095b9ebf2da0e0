"""Dropout that is cheap on a CPU.

torch draws a CPU dropout mask with `bernoulli_`, one Mersenne-Twister number and a float
comparison per element, on one thread, and in the small CPU Transformer's training step
(recipes/multi30k/transformer-cpu.yaml) that was a large share of the time (docs/performance.md).
Here a mask comes from random 64-bit integers, four 15-bit draws from each: an element is dropped
when its draw is below round(p * 2^15), so the probability is p rounded to a multiple of 1/32768
(0.1 becomes 3277/32768 = 0.100006) and the kept elements are scaled by 1 / (1 - that
probability), which keeps the expectation exact. The integers come from torch's default CPU
generator, so `torch.manual_seed` and a checkpoint's saved RNG state reproduce the masks, as they
do with `F.dropout`.

On other devices (CUDA draws its masks in parallel, with Philox) the module is `F.dropout`.
benchmarks/train_speed.py --ablations times both on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 15  # draws of 15 bits: the 16-bit lanes of a random non-negative int64, their top bit cleared
_LANES = 4  # 16-bit lanes in one int64


def keep_mask(shape: torch.Size, p: float) -> tuple[Tensor, float]:
    """A boolean mask of `shape`, False with probability p rounded to 1/2^15, and the probability
    used. The random numbers come from torch's default CPU generator."""
    n = math.prod(shape)
    words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64).random_()
    draws = words.view(torch.int16)[:n].view(shape).bitwise_and_((1 << _BITS) - 1)
    threshold = round(p * (1 << _BITS))
    return draws >= threshold, threshold / (1 << _BITS)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training), with the cheap mask on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep, used = keep_mask(x.shape, p)
    if used == 0.0:  # p below 1 / 2^16: nothing is dropped
        return x
    # 0 or the scale: the product's gradient is the output gradient times the same mask
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - used))


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
