"""Tensor batches: padded source / target tensors and token-based, length-bucketed batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from mt.vocab import BOS_ID, EOS_ID, PAD_ID


# ----------------------------------------------------------------------------------------------
# tensors and batches


@dataclass
class Batch:
    src: Tensor  # [B, S] source ids + eos, padded
    src_lengths: Tensor  # [B]
    tgt_in: Tensor  # [B, T] bos + target ids, padded
    tgt_out: Tensor  # [B, T] target ids + eos, padded
    ntokens: int  # real target tokens (loss normaliser)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.src.to(device, non_blocking=True),
            self.src_lengths.to(device, non_blocking=True),
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.ntokens,
        )


def pad(seqs: Sequence[Sequence[int]], value: int = PAD_ID) -> Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def source_tensor(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Source ids (eos appended) -> padded [B, S] and lengths [B]."""
    with_eos = [list(s) + [EOS_ID] for s in seqs]
    return pad(with_eos), torch.tensor([len(s) for s in with_eos], dtype=torch.long)


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    s, lengths = source_tensor(src)
    tgt_in = pad([[BOS_ID] + list(t) for t in tgt])
    tgt_out = pad([list(t) + [EOS_ID] for t in tgt])
    return Batch(s, lengths, tgt_in, tgt_out, int(sum(len(t) + 1 for t in tgt)))


def token_batches(lengths: Sequence[int], batch_tokens: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Group indices (visited in `order`, normally sorted by length) so that
    batch size x longest item <= batch_tokens (padding included). An item longer than
    batch_tokens gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order if order is not None else range(len(lengths)):
        n = lengths[i]
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


class TokenBatcher:
    """Length-bucketed token batches over an encoded parallel corpus.

    Sentences are sorted by (target, source) length with a seeded random tie-break, cut
    into batches of at most `batch_tokens` padded tokens per side, and the batch order is
    shuffled per epoch. `epoch_batches(epoch)` is a pure function of (seed, epoch), so a
    resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, src: list[list[int]], tgt: list[list[int]], batch_tokens: int, seed: int) -> None:
        self.src, self.tgt = src, tgt
        self.batch_tokens = batch_tokens
        self.seed = seed
        rng = random.Random(seed)
        tie = [rng.random() for _ in src]
        order = sorted(range(len(src)), key=lambda i: (len(tgt[i]), len(src[i]), tie[i]))
        lengths = [max(len(s), len(t)) + 1 for s, t in zip(src, tgt)]
        self.batches = token_batches(lengths, batch_tokens, order)

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_batches(self, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        if world > 1:
            usable = len(order) - len(order) % world  # every rank gets the same number of batches
            order = order[:usable][rank::world]
        return [self.batches[i] for i in order]

    def collate(self, indices: Sequence[int]) -> Batch:
        return collate([self.src[i] for i in indices], [self.tgt[i] for i in indices])


def filter_pairs(src: list[list[int]], tgt: list[list[int]], max_len: int) -> tuple[list[list[int]], list[list[int]], int]:
    """Drop pairs with an empty side or a side longer than max_len tokens; return the number dropped."""
    keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if 0 < len(s) <= max_len and 0 < len(t) <= max_len]
    return [src[i] for i in keep], [tgt[i] for i in keep], len(src) - len(keep)
