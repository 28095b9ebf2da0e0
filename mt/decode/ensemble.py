"""Ensembles: several models decoded as one `Seq2Seq`.

    model = EnsembleModel([run_a.model, run_b.model])
    hyps = search(model, src, src_lengths)          # any search, unchanged

Every step asks each member for its log-probabilities and returns the log of their mean
probability, log((p_1 + ... + p_n) / n), as fairseq and Marian do (or of a weighted mean,
log(w_1 p_1 + ... + w_n p_n) with weights summing to 1, as Marian's --weights). It is a mixture of the
members' distributions: the result is again a normalised distribution (so beam scores, length
penalties and `mt score` keep their meaning), and a token that one member rules out
(probability ~0) is only down-weighted, not vetoed, as it would be by averaging log-probabilities
(a product of experts that then needs renormalising).

The ensemble's DecoderState holds one DecoderState per member: reordering beams, dropping
finished sentences and expanding to beams are passed on to each member state, so every member
keeps its own layout (shared encoder memory among beams, KV caches, RNN hidden states).
Members may differ in architecture; they must read the same source ids and write the same target
ids (`check_compatible` on the runs' vocabularies). The attention returned is the members' mean
(members without attention are left out).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from mt import MTError
from mt.models.base import DecoderState, EncoderOut, Seq2Seq
from mt.rundir import checkpoints_per_run


@dataclass
class EnsembleEncoderOut(EncoderOut):
    members: list[EncoderOut] = field(default_factory=list)


class EnsembleState(DecoderState):
    """A DecoderState whose rows live in the member states: every row operation is applied to each
    (it holds no tensors of its own)."""

    def __init__(self, members: list[DecoderState], need_attention: bool) -> None:
        super().__init__({}, {}, step=0, need_attention=need_attention)
        self.members = members

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size

    def select(self, index: Tensor, same_sources: bool = False) -> "EnsembleState":
        return self._new([m.select(index, same_sources) for m in self.members])

    def select_(self, index: Tensor, same_sources: bool = False) -> "EnsembleState":
        for m in self.members:
            m.select_(index, same_sources)
        return self

    def expand(self, n: int) -> "EnsembleState":
        return self._new([m.expand(n) for m in self.members])

    def keep_sentences_(self, keep: Tensor, rows_per_sentence: int) -> "EnsembleState":
        for m in self.members:
            m.keep_sentences_(keep, rows_per_sentence)
        return self

    def _new(self, members: list[DecoderState]) -> "EnsembleState":
        state = EnsembleState(members, self.need_attention)
        state.step = self.step
        return state


class EnsembleModel(Seq2Seq):
    """The mixture of `models` (same source and target vocabularies) as one Seq2Seq."""

    def __init__(self, models: Sequence[Seq2Seq], weights: Sequence[float] | None = None) -> None:
        """weights: each member's share of the mixture (normalised to sum 1; default: equal), as
        Marian's --weights; a member with weight 0 takes no part in the distribution."""
        super().__init__()
        if not models:
            raise MTError("an ensemble needs at least one model")
        weights = list(weights) if weights is not None else [1.0] * len(models)
        if len(weights) != len(models) or any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise MTError(f"ensemble weights must be {len(models)} numbers >= 0, not all 0; got {weights}")
        self.members = nn.ModuleList(models)
        for name in ("pad_id", "bos_id", "eos_id"):
            ids = {getattr(m, name) for m in models}
            if len(ids) > 1:
                raise MTError(f"the ensemble's models disagree on {name}: {sorted(ids)}")
        self.max_src_positions = _smallest(m.max_src_positions for m in models)
        self.max_tgt_positions = _smallest(m.max_tgt_positions for m in models)
        total = sum(weights)
        #: log of each member's normalised weight (Python floats: no device, no dtype to follow)
        self.log_weights = [math.log(w / total) if w > 0 else float("-inf") for w in weights]

    @property
    def has_attention(self) -> bool:
        return any(m.has_attention for m in self.members)

    def set_attention_layer(self, layer: int) -> None:
        for m in self.members:
            m.set_attention_layer(layer)

    @contextmanager
    def attention_layer_set(self, layer: int) -> Iterator[None]:
        with ExitStack() as stack:  # each member back to its own layer (members may differ in depth)
            for m in self.members:
                stack.enter_context(m.attention_layer_set(layer))
            yield

    def _mix(self, log_probs: list[Tensor]) -> Tensor:
        """log of the (weighted) mean of the members' probabilities, [..., V] each -> [..., V]."""
        if len(log_probs) == 1:
            return log_probs[0]
        sizes = {lp.size(-1) for lp in log_probs}
        if len(sizes) > 1:
            raise MTError(f"the ensemble's models have different target vocabulary sizes: {sorted(sizes)}")
        return torch.logsumexp(torch.stack([lp + w for lp, w in zip(log_probs, self.log_weights)]), dim=0)

    def encode(self, src: Tensor, src_lengths: Tensor) -> EnsembleEncoderOut:
        outs = [m.encode(src, src_lengths) for m in self.members]
        return EnsembleEncoderOut(memory=outs[0].memory, src_mask=outs[0].src_mask, members=outs)

    def init_state(self, enc: EncoderOut, max_len: int, need_attention: bool = False) -> EnsembleState:
        assert isinstance(enc, EnsembleEncoderOut), "encode with the ensemble before init_state"
        states = [m.init_state(e, max_len, need_attention) for m, e in zip(self.members, enc.members)]
        return EnsembleState(states, need_attention)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None]:
        assert isinstance(state, EnsembleState)
        log_probs, attention = [], []
        for m, s in zip(self.members, state.members):
            lp, attn = m.decode_step(prev_tokens, s)
            log_probs.append(lp.float())
            if attn is not None:
                attention.append(attn.float())
        state.step += 1
        attn = torch.stack(attention).mean(0) if attention else None
        return self._mix(log_probs), attn

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced log-probabilities of the mixture [B, T, V] (normalised, so they are also
        valid logits: log_softmax leaves them unchanged)."""
        return self._mix([m(src, src_lengths, tgt_in).float().log_softmax(-1) for m in self.members])

    def teacher_forced_attention(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor | None:
        """The mean attention of the members that have one (as decode_step); None when none has."""
        found = [m.teacher_forced_attention(src, src_lengths, tgt_in) for m in self.members if m.has_attention]
        return torch.stack([a.float() for a in found]).mean(0) if found else None


def _smallest(values) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def check_compatible(runs: Sequence[tuple[str, object]]) -> None:
    """Raise one MTError naming two runs whose models cannot be ensembled: their source or target
    SentencePiece models differ. `runs` are (name, Run) pairs (mt.decode.translator.Run)."""
    (first_name, first), rest = runs[0], runs[1:]
    for name, run in rest:
        for side in ("tgt", "src"):
            a, b = getattr(first, f"{side}_vocab"), getattr(run, f"{side}_vocab")
            if not a.same_as(b):
                what = "target vocabulary" if side == "tgt" else "source segmentation (SentencePiece model)"
                raise MTError(
                    f"cannot ensemble {first_name} and {name}: their {what} differs "
                    f"({a.path}: {len(a)} pieces, {b.path}: {len(b)} pieces); ensemble members must be "
                    f"trained with the same SentencePiece model(s)"
                )


def load_models(run_dirs: Sequence[str | Path], device: torch.device | str = "cpu",
                checkpoints: Sequence[str] = ("best",), weights: Sequence[float] | None = None):
    """Load one run, or several as an ensemble: a Run (mt.decode.translator.Run) whose model is the
    EnsembleModel of the runs' models (with `weights`), with the first run's config and
    vocabularies. `checkpoints` has one entry for all runs or one per run."""
    from mt.decode.translator import Run, load_run

    if not run_dirs:
        raise MTError("no run to load")
    which = checkpoints_per_run(run_dirs, checkpoints)
    if weights is not None and len(weights) != len(run_dirs):
        raise MTError(f"--ensemble-weights: {len(weights)} weights for {len(run_dirs)} runs")
    runs = [load_run(d, device, c) for d, c in zip(run_dirs, which)]
    if len(runs) == 1:
        return runs[0]
    check_compatible([(str(d), r) for d, r in zip(run_dirs, runs)])
    first = runs[0]
    return Run(first.config, EnsembleModel([r.model for r in runs], weights).to(device).eval(), first.src_vocab,
               first.tgt_vocab)
