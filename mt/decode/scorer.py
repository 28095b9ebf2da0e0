"""Forced scoring: the model's log-probability of given translations (`mt score`).

    scorer = Scorer(model, src_vocab, tgt_vocab, LengthPenalty("gnmt", 0.6))
    for s in scorer.score([("a dog runs .", "ein hund läuft .")]):
        s.log_prob, s.score, s.token_log_probs

One teacher-forced pass per batch of pairs (the model's `forward`, the pass training uses): the
log-probability of every target piece and of the final eos given the source and the pieces before
it. `log_prob` is their sum, exactly what a search reports as `Hypothesis.log_prob` for the same
tokens, and `score` divides it by the search's length penalty of (pieces + 1), what beam search
ranks by. Pairs are batched by length like the translator's sentences and returned in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from mt import MTError
from mt.data.batching import pad, source_tensor, token_batches
from mt.models.base import Seq2Seq
from mt.decode.search import LengthPenalty
from mt.decode.unseen import placeholder_protector
from mt.data.placeholders import mask_like
from mt.data.vocab import BOS_ID, EOS_ID, Vocab


@dataclass
class Scored:
    log_prob: float  # sum of token_log_probs
    score: float  # log_prob / length penalty (pieces + 1)
    tokens: list[int]  # target ids, without bos/eos
    token_log_probs: list[float]  # one per target piece, then eos
    attention: Tensor | None = None  # [pieces + 1, source pieces + 1] when asked for
    src_tokens: list[int] | None = None
    #: why the pair was not scored (a side longer than the model allows): log_prob and score are then
    #: -inf and token_log_probs empty, so that a filter drops it and the output keeps one line per pair
    error: str | None = None


class Scorer:
    def __init__(
        self,
        model: Seq2Seq,
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        len_penalty: LengthPenalty | None = None,
        device: torch.device | str = "cpu",
        batch_tokens: int = 4096,
        return_attention: bool = False,
        placeholders: bool = False,
        protect: Sequence[str] = (),
    ) -> None:
        """placeholders=True: pairs are masked as the Translator masks them (mt.data.placeholders), the
        target's spans by the source's placeholders, so a translation is scored as the model made it."""
        self.model, self.src_vocab, self.tgt_vocab = model, src_vocab, tgt_vocab
        self.protector = placeholder_protector(src_vocab, tgt_vocab, protect) if placeholders else None
        self.len_penalty = len_penalty or LengthPenalty("none")
        self.device = torch.device(device)
        self.batch_tokens = batch_tokens
        if return_attention and not model.has_attention:
            raise MTError("this model has no attention (an RNN with model.attention: none): it cannot align words")
        self.return_attention = return_attention

    def _too_long(self, src: Sequence[int], tgt: Sequence[int]) -> str | None:
        """Why the model cannot score the pair (a side longer than its positions), or None."""
        limits = ((src, self.model.max_src_positions, "source"), (tgt, self.model.max_tgt_positions, "target"))
        for ids, limit, side in limits:
            if limit is not None and len(ids) + 1 > limit:
                return f"the {side} has {len(ids)} subword tokens, more than the model's {limit - 1}"
        return None

    @torch.inference_mode()
    def score_ids(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]]) -> list[Scored]:
        """Score id sequences (no bos/eos); results in input order. A pair longer than the model
        allows is not scored: its Scored has -inf scores and `error` says why (a corpus filter keeps
        going; the translator cuts long lines, but a forced target cannot be cut in step with its
        source)."""
        if len(src_ids) != len(tgt_ids):
            raise ValueError("as many sources as targets")
        results: list[Scored | None] = [None] * len(src_ids)
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            error = self._too_long(s, t)
            if error is not None:
                results[i] = Scored(log_prob=float("-inf"), score=float("-inf"), tokens=list(t), token_log_probs=[],
                                    src_tokens=list(s), error=error)
        lengths = [max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids)]
        order = sorted((i for i in range(len(lengths)) if results[i] is None), key=lambda i: lengths[i], reverse=True)
        for batch in token_batches(lengths, self.batch_tokens, order):
            for i, scored in zip(batch, self._score_batch([src_ids[i] for i in batch], [tgt_ids[i] for i in batch])):
                results[i] = scored
        return results  # type: ignore[return-value]

    def _score_batch(self, srcs: list[Sequence[int]], tgts: list[Sequence[int]]) -> list[Scored]:
        src, src_lengths = source_tensor(srcs)
        tgt_in = pad([[BOS_ID] + list(t) for t in tgts]).to(self.device)
        tgt_out = pad([list(t) + [EOS_ID] for t in tgts]).to(self.device)
        src, src_lengths = src.to(self.device), src_lengths.to(self.device)
        logits = self.model(src, src_lengths, tgt_in).float()  # [B, T, V]
        # log_softmax at the target ids only: no second [B, T, V] tensor
        token_lp = (logits.gather(2, tgt_out[:, :, None])[:, :, 0] - logits.logsumexp(-1)).cpu()  # [B, T]
        attention = None
        if self.return_attention:
            attention = self.model.teacher_forced_attention(src, src_lengths, tgt_in).float().cpu()
        out = []
        for i, t in enumerate(tgts):
            n = len(t) + 1
            values = token_lp[i, :n]
            total = float(values.sum())
            out.append(Scored(
                log_prob=total,
                score=total / float(self.len_penalty(float(n))),
                tokens=list(t),
                token_log_probs=values.tolist(),
                attention=attention[i, :n, : int(src_lengths[i])] if attention is not None else None,
                src_tokens=list(srcs[i]),
            ))
        return out

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Scored]:
        """Score (source, target) text pairs; an empty target scores the eos alone."""
        if self.protector is not None:
            masks = [self.protector.mask(s) for s, _ in pairs]
            pairs = [(m.text, mask_like(t, m)) for m, (_, t) in zip(masks, pairs)]
        src_ids = self.src_vocab.encode_batch([s for s, _ in pairs])
        tgt_ids = self.tgt_vocab.encode_batch([t for _, t in pairs])
        return self.score_ids(src_ids, tgt_ids)

    def stream(self, pairs: Iterable[tuple[str, str]], buffer_lines: int = 1000) -> Iterator[Scored]:
        """Score an iterable of pairs chunk by chunk, in order, with bounded memory."""
        chunk: list[tuple[str, str]] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) >= buffer_lines:
                yield from self.score(chunk)
                chunk = []
        if chunk:
            yield from self.score(chunk)
