"""The contract between models and search.

A model encodes a padded source batch once, builds a DecoderState from it, and then
advances one target position per `decode_step`. Every tensor in a DecoderState keeps
the batch on dim 0, so `state.expand(beam)` (batch -> batch x beam), `state.select_(index)`
(reorder beams, drop rows) and `state.keep_sentences_(keep)` (drop finished sentences) work
whatever the architecture.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from mt.data.vocab import BOS_ID, EOS_ID, PAD_ID


def _index(value: Any, index: Tensor) -> Any:
    if value is None:
        return None
    if hasattr(value, "index_select"):  # tensors, and caches that copy only what they hold
        return value.index_select(0, index)
    if isinstance(value, tuple):
        return tuple(_index(v, index) for v in value)
    if isinstance(value, list):
        return [_index(v, index) for v in value]
    raise TypeError(f"DecoderState cannot index a {type(value).__name__}")


@dataclass
class EncoderOut:
    memory: Tensor  # [B, S, D] encoder outputs
    src_mask: Tensor  # [B, S] bool, True at real (non-pad) source positions
    final: Any = None  # architecture-specific summary (RNN: final hidden state), batch on dim 0


@dataclass
class DecoderState:
    """Decoder memory between steps. Batch on dim 0 of every tensor.

    static:  depends only on the source sentence (encoder memory, mask, cross-attention K/V).
    dynamic: changes every step (RNN hidden state, self-attention KV cache, input feeding).
    step:    number of target tokens consumed so far (the same for every row).
    group:   rows per source sentence. With group g > 1 the static tensors hold one row per
             sentence and decoder row r reads static row r // g (the rows of a sentence are
             adjacent): beams share their sentence's encoder output instead of copying it.
    grouped_static: the model's decode_step reads static rows by group, so `expand` may share
             the static tensors (g > 1); False: `expand` copies them per row (g stays 1).
    """

    static: dict[str, Any]
    dynamic: dict[str, Any]
    step: int = 0
    need_attention: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # non-tensor settings (e.g. cache length)
    group: int = 1
    grouped_static: bool = False

    @property
    def batch_size(self) -> int:
        """Decoder rows (sentences x group)."""
        return self.static["src_mask"].size(0) * self.group

    def _static_rows(self, index: Tensor) -> dict[str, Any]:
        rows = index if self.group == 1 else torch.div(index, self.group, rounding_mode="floor")
        return {k: _index(v, rows) for k, v in self.static.items()}

    def select(self, index: Tensor, same_sources: bool = False) -> "DecoderState":
        """A new state with rows `index` of every tensor; this one stays usable.

        same_sources=True promises that row i of the result comes from a row with the same
        source sentence as row i had before (a reorder of beams within each sentence), so the
        static tensors need no copy.
        """
        static, group = (self.static, self.group) if same_sources else (self._static_rows(index), 1)
        dynamic = {k: _index(v, index) for k, v in self.dynamic.items()}
        return DecoderState(static, dynamic, self.step, self.need_attention, dict(self.extras), group,
                            self.grouped_static)

    def select_(self, index: Tensor, same_sources: bool = False) -> "DecoderState":
        """`select` applied to this state (updated and returned): what the searches call every step."""
        if not same_sources:
            self.static, self.group = self._static_rows(index), 1
        self.dynamic = {k: _index(v, index) for k, v in self.dynamic.items()}
        return self

    def expand(self, n: int) -> "DecoderState":
        """Each row repeated n times, copies adjacent (batch -> batch x beam). Models with
        grouped static tensors share them among the copies; others get them copied."""
        index = torch.arange(self.batch_size, device=self.static["src_mask"].device).repeat_interleave(n)
        if not self.grouped_static:
            return self.select(index)
        dynamic = {k: _index(v, index) for k, v in self.dynamic.items()}
        return DecoderState(self.static, dynamic, self.step, self.need_attention, dict(self.extras), self.group * n,
                            self.grouped_static)

    def keep_sentences_(self, keep: Tensor, rows_per_sentence: int) -> "DecoderState":
        """In place: keep sentences `keep` (indices among the current sentences, each with
        `rows_per_sentence` adjacent rows, e.g. its beams), as when finished sentences leave the batch."""
        r = rows_per_sentence
        rows = keep if r == 1 else (keep[:, None] * r + torch.arange(r, device=keep.device)).view(-1)
        if self.group == r:
            self.static = {k: _index(v, keep) for k, v in self.static.items()}
        else:
            self.static, self.group = self._static_rows(rows), 1
        self.dynamic = {k: _index(v, rows) for k, v in self.dynamic.items()}
        return self


class Seq2Seq(nn.Module):
    """An encoder-decoder that the search can drive without knowing its architecture."""

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    #: longest source / target the model can represent (None: unbounded)
    max_src_positions: int | None = None
    max_tgt_positions: int | None = None

    @property
    def has_attention(self) -> bool:
        """Whether decode_step can return an attention over the source (word alignments, plots);
        False for an RNN without attention (`model.attention: none`)."""
        return True

    def set_attention_layer(self, layer: int) -> None:
        """Which attention `decode_step` returns when asked for it (alignments, plots). Models with
        one attention (RNNs) have nothing to choose; the Transformer picks a decoder layer."""

    @contextmanager
    def attention_layer_set(self, layer: int) -> Iterator[None]:
        """set_attention_layer(layer) for the block, then the layer that was set before."""
        before = getattr(self, "attention_layer", None)
        self.set_attention_layer(layer)
        try:
            yield
        finally:
            if before is not None:
                self.set_attention_layer(before)

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOut:  # pragma: no cover - abstract
        """src [B, S] token ids padded with pad_id; src_lengths [B]."""
        raise NotImplementedError

    def init_state(self, enc: EncoderOut, max_len: int, need_attention: bool = False) -> DecoderState:
        """State before the first target token; max_len bounds the decoded length (cache size)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None]:
        """prev_tokens [B] -> (log_probs [B, V], attention over the source [B, S] or None).

        Advances `state` in place by one position.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V] for target inputs tgt_in [B, T] (bos-prefixed)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def teacher_forced_attention(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor | None:
        """Attention [B, T, S] of the teacher-forced pass, computed with decode_step; None for a model
        without attention (has_attention False)."""
        if not self.has_attention:
            return None
        enc = self.encode(src, src_lengths)
        state = self.init_state(enc, tgt_in.size(1), need_attention=True)
        rows = []
        for t in range(tgt_in.size(1)):
            _, attn = self.decode_step(tgt_in[:, t], state)
            rows.append(attn)
        return torch.stack(rows, dim=1)


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """[B] lengths -> [B, max_len] bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
