"""Tensor batches: padded source / target tensors, and token-based, length-bucketed batches over
memory-mapped token arrays (mt/data/dataset.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mt.data.dataset import TokenArray
from mt.data.vocab import BOS_ID, EOS_ID, PAD_ID


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


def greedy_bounds(padded: np.ndarray, batch_tokens: int) -> np.ndarray:
    """Batch boundaries over items sorted by padded length (non-decreasing): each batch takes as many
    items as fit, count x longest <= batch_tokens (token_batches' rule; an item over the budget gets
    a batch of its own). One numpy search per batch, not per item."""
    n, bounds, i = len(padded), [0], 0
    while i < n:
        most = max(1, batch_tokens // int(padded[i]))  # no batch starting here holds more
        window = padded[i : i + most].astype(np.int64)
        fits = window * np.arange(1, len(window) + 1) <= batch_tokens  # True, then False (monotone)
        i += max(1, int(fits.sum()))
        bounds.append(i)
    return np.asarray(bounds, dtype=np.int64)


def epoch_shares(sizes: Sequence[int], weights: Sequence[float], temperature: float = 1.0) -> list[int]:
    """Pairs per epoch from each corpus: corpus i (n_i pairs, weight w_i) gives
    round(N * (w_i n_i)^(1/T) / sum_j (w_j n_j)^(1/T)) of the N = sum_j n_j pairs of an epoch.
    T = 1: in proportion to weight x size (all weights 1: every pair once); a larger T flattens the
    mix towards equal shares, as fairseq's multilingual temperature sampling."""
    mass = np.array([(w * n) ** (1.0 / temperature) if n else 0.0 for n, w in zip(sizes, weights)])
    if not mass.sum():
        return [0] * len(mass)
    return [int(x) for x in np.rint(sum(sizes) * mass / mass.sum())]


class TokenBatcher:
    """Length-bucketed token batches over memory-mapped (or in-memory) token arrays, computed with
    numpy from the offsets: no token is copied into Python objects.

    An epoch draws its pairs from the corpora (`corpora`: (start, end, weight) pair ranges, shares
    by `epoch_shares`: a corpus's pairs are repeated whole as often as its share allows, the rest
    is a random subset), sorts them by padded length max(source, target) + 1, then target and
    source length, with a random tie-break, cuts them greedily into batches of at most
    `batch_tokens` padded tokens (`greedy_bounds`), and shuffles the batch order. `epoch_batches(epoch)` is a pure
    function of (seed, epoch), so a resumed run sees exactly the batches it would have seen, and
    every rank of a distributed run computes the same epoch and takes its own share of it.

    `segmentations` > 1 (subword regularization): the arrays hold that many rows per pair, side by
    side (pair i: rows i*K .. i*K+K-1, sampled segmentations, see mt.data.prepare); `corpora` count
    pairs, and each epoch draws one row of each pair it uses. The batches hold row indices.
    """

    def __init__(self, src: TokenArray, tgt: TokenArray, batch_tokens: int, seed: int,
                 corpora: Sequence[tuple[int, int, float]] = (), temperature: float = 1.0, max_len: int = 0,
                 segmentations: int = 1) -> None:
        self.src, self.tgt = src, tgt
        self.batch_tokens, self.seed, self.segmentations = batch_tokens, seed, segmentations
        ls, lt = src.lengths(), tgt.lengths()
        if len(ls) % segmentations:
            raise ValueError(f"{len(ls)} rows are not {segmentations} segmentations of each pair")
        # sort key without its random bits: padded length, target length, source length (12 bits each)
        self.key = ((np.minimum(np.maximum(ls, lt) + 1, 4095) << 24) | (np.minimum(lt, 4095) << 12)
                    | np.minimum(ls, 4095)).astype(np.int64)
        self.padded = (np.maximum(ls, lt) + 1).astype(np.int32)
        fits = (ls <= max_len) & (lt <= max_len) if max_len else None
        if fits is not None and segmentations > 1:  # a pair fits when all its segmentations do
            fits = fits.reshape(-1, segmentations).all(axis=1)
        pairs = len(ls) // segmentations
        index = np.int32 if len(ls) < 2**31 else np.int64
        self.members = []  # pair indices of each corpus that the batches may use
        for start, end, _ in corpora or [(0, pairs, 1.0)]:
            ids = np.arange(start, end, dtype=index)
            self.members.append(ids if fits is None else ids[fits[start:end]])
        self.skipped = pairs - sum(len(m) for m in self.members)
        weights = [w for _, _, w in corpora] or [1.0]
        self.shares = epoch_shares([len(m) for m in self.members], weights, temperature)
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], batch_tokens: int,
                   seed: int) -> "TokenBatcher":
        return cls(TokenArray.from_lists(src), TokenArray.from_lists(tgt), batch_tokens, seed)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pairs in length order, batch starts (+ the end), batch order) of an epoch."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1:]
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for members, share in zip(self.members, self.shares):
            if not len(members):
                continue
            full, rest = divmod(share, len(members))
            parts += [members] * full
            if rest:
                parts.append(members[np.sort(rng.choice(len(members), rest, replace=False))])
        pairs = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.segmentations > 1:  # the rows: one sampled segmentation of each pair
            k = self.segmentations
            pairs = pairs.astype(np.int64) * k + rng.integers(0, k, len(pairs))
        key = (self.key[pairs] << 24) | rng.integers(0, 1 << 24, len(pairs))
        pairs = pairs[np.argsort(key, kind="stable")]
        del key
        bounds = greedy_bounds(self.padded[pairs], self.batch_tokens)
        order = rng.permutation(len(bounds) - 1)
        self._cache = (epoch, pairs, bounds, order)
        return pairs, bounds, order

    def __len__(self) -> int:
        return len(self._epoch(0)[2])

    def epoch_batches(self, epoch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
        """This rank's batches of `epoch` (arrays of pair indices), in the order it trains on them;
        every rank gets the same number of batches, and no two ranks share one."""
        pairs, bounds, order = self._epoch(epoch)
        if world > 1:
            order = order[: len(order) - len(order) % world][rank::world]
        return [pairs[bounds[i] : bounds[i + 1]] for i in order]

    @property
    def batches(self) -> list[np.ndarray]:
        """The batches of epoch 0 in length order (validation)."""
        pairs, bounds, _ = self._epoch(0)
        return [pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def collate(self, indices: Sequence[int] | np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        src = self.src.rows(indices, PAD_ID, after=EOS_ID)
        lengths = self.src.offsets[indices + 1] - self.src.offsets[indices] + 1
        tgt_lengths = self.tgt.offsets[indices + 1] - self.tgt.offsets[indices]
        return Batch(torch.from_numpy(src), torch.from_numpy(lengths.astype(np.int64)),
                     torch.from_numpy(self.tgt.rows(indices, PAD_ID, before=BOS_ID)),
                     torch.from_numpy(self.tgt.rows(indices, PAD_ID, after=EOS_ID)),
                     int(tgt_lengths.sum()) + len(indices))


def filter_pairs(src: list[list[int]], tgt: list[list[int]], max_len: int) -> tuple[list[list[int]], list[list[int]], int]:
    """Drop pairs with an empty side or a side longer than max_len tokens; return the number dropped."""
    keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if 0 < len(s) <= max_len and 0 < len(t) <= max_len]
    return [src[i] for i in keep], [tgt[i] for i in keep], len(src) - len(keep)
