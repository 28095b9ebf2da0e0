"""Lexically constrained beam search with dynamic beam allocation (DBA; Post & Vilar 2018), in
tensors for the whole batch as Hu et al. (2019) vectorise it.

Each sentence has phrases (token sequences) its output must contain. Every open hypothesis knows,
for each phrase, whether it has met it (the phrase occurs in its tokens) and how far it is into it
(the longest end of its tokens that begins the phrase: a KMP state, so "a a a b" meets "a a b").
Its bank is the number of constraint tokens it has: the lengths of the phrases met plus its
progress into the others. At each step the candidates are
  1. the best 2 x beam continuations over beam x vocabulary (those of unconstrained beam search),
  2. every hypothesis continued with each token that advances one of its unmet phrases (the next
     token of its progress, or a phrase's first),
  3. every hypothesis continued with its own best token,
and the beam is shared among the banks: round by round, each bank (most constraint tokens first)
gives its best remaining candidate, until beam candidates are taken. A bank with fewer candidates
leaves its share to the others. eos is allowed only to hypotheses that have met every phrase (the
length limit still ends a hypothesis that has not; the search ranks such hypotheses after those that
have). A hypothesis that ends takes its place in the round as in unconstrained search (eos among
the first beam candidates), so a sentence without constraints is decoded as beam search decodes it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mt.decode.rules import NEG_INF, last_tokens

WORD_START = "\u2581"  # SentencePiece's mark of a word's start


def segmentations(vocab, phrase: str) -> list[list[int]]:
    """The target pieces of `phrase` as they stand in running text (vocab: mt.data.vocab.Vocab), the
    usual form first. A phrase that begins with a letter or a digit starts a word: SentencePiece's
    pieces of it ("▁Ver" "trag"), as after a space or at the line's start. One that begins with
    anything else attaches to what precedes it, as "," "'s" "-Spieler" do: SentencePiece gives it
    a bare "▁" piece first, which the attached form drops; the detached form comes second (an avoid
    list bans both)."""
    ids = vocab.encode(phrase.strip())
    if not ids:
        return []
    if vocab.pieces(ids[:1]) == [WORD_START] and len(ids) > 1:
        return [ids[1:], ids] if not phrase.strip()[:1].isalnum() else [ids, ids[1:]]
    return [ids]


def contains(tokens: Sequence[int], phrase: Sequence[int]) -> bool:
    n = len(phrase)
    return any(list(tokens[i: i + n]) == list(phrase) for i in range(len(tokens) - n + 1))


def constraint_marks(tokens: Sequence[int], phrases: Sequence[Sequence[int]]) -> list[bool]:
    """Per token: whether it is part of the first occurrence of one of the phrases."""
    marks = [False] * len(tokens)
    for phrase in phrases:
        n = len(phrase)
        for i in range(len(tokens) - n + 1):
            if n and list(tokens[i: i + n]) == list(phrase):
                marks[i: i + n] = [True] * n
                break
    return marks


class Constraints:
    """The constraint bookkeeping of one beam search call: per sentence still searched its phrases,
    per open hypothesis (row) what it has met and its progress."""

    def __init__(self, phrases: Sequence[Sequence[Sequence[int]]], max_lens: Tensor) -> None:
        """phrases[i]: sentence i's phrases (token lists; duplicates count once). A sentence whose
        phrases together are longer than its length limit (max_lens[i] tokens) is searched without
        them (the caller finds them missing in the output and says so)."""
        device, limits = max_lens.device, max_lens.tolist()
        kept = []
        for ps, limit in zip(phrases, limits):
            unique = list(dict.fromkeys(tuple(p) for p in ps if len(p)))
            kept.append(unique if sum(len(p) for p in unique) <= limit else [])
        n_phr = max((len(ps) for ps in kept), default=0)
        width = max((len(p) for ps in kept for p in ps), default=1)
        self.phrases = torch.full((len(kept), max(n_phr, 1), width), -1, dtype=torch.long)
        self.plen = torch.zeros((len(kept), max(n_phr, 1)), dtype=torch.long)
        for i, ps in enumerate(kept):
            for j, p in enumerate(ps):
                self.phrases[i, j, : len(p)], self.plen[i, j] = torch.tensor(p), len(p)
        self.phrases, self.plen = self.phrases.to(device), self.plen.to(device)
        self.n_banks = max(sum(len(p) for p in ps) for ps in kept) + 1 if kept else 1  # banks 0..most pieces
        self.met = self.plen == 0  # [rows, P] one row per sentence before the first step; padding: met
        self.prog = torch.zeros_like(self.plen)  # [rows, P]
        self.width = 1
        self._ends_index: tuple[Tensor, Tensor, Tensor] | None = None  # _step's gather, made once

    @staticmethod
    def active(phrases: Sequence[Sequence[Sequence[int]]] | None) -> bool:
        return phrases is not None and any(any(len(p) for p in ps) for ps in phrases)

    def all_met(self) -> Tensor:
        return self.met.all(-1)  # [rows]

    def _step(self, window: Tensor, phrases: Tensor, plen: Tensor, met: Tensor) -> tuple[Tensor, Tensor]:
        """For rows whose last tokens are window [R, K] (-2 before the first): (met [R, P] after
        them, given met before; progress [R, P]: the longest end of window that starts each phrase,
        shorter than the phrase). All K lengths at once: ends[r, p, j - 1] says whether the last j
        tokens of window r are the first j of phrase p."""
        k = window.size(1)
        if self._ends_index is None or self._ends_index[0].size(0) != k:
            j = torch.arange(1, k + 1, device=window.device)
            i = torch.arange(k, device=window.device)
            # the window position compared with phrase position i for an end of length j: k - j + i
            self._ends_index = ((k - j[:, None] + i[None, :]).clamp(max=k - 1), i[None, :] >= j[:, None], j)
        index, beyond, lengths = self._ends_index
        ends = ((window[:, index][:, None] == phrases[:, :, None, :]) | beyond).all(-1)  # [R, P, K]
        met = met | (ends & (lengths == plen[:, :, None])).any(-1)
        prog = ((ends & (lengths < plen[:, :, None])) * lengths).amax(-1)
        return met, prog

    def _window(self, seqs: Tensor, tok: Tensor) -> Tensor:
        """The last K - 1 tokens of seqs [R, t] then tok [R]: [R, K] (-2 where there is none)."""
        return torch.cat([last_tokens(seqs, self.phrases.size(-1) - 1), tok[:, None]], dim=1)

    def advance(self, rows: Tensor, seqs: Tensor, width: int) -> None:
        """After beam search's advance: the new rows continue rows `rows` with the last token of seqs."""
        sent = torch.div(torch.arange(rows.numel(), device=rows.device), width, rounding_mode="floor")
        self.met, self.prog = self._step(self._window(seqs[:, :-1], seqs[:, -1]), self.phrases[sent],
                                         self.plen[sent], self.met[rows])
        self.width = width

    def keep_sentences(self, keep: Tensor, k: int) -> None:
        keep_rows = (keep[:, None] * k + torch.arange(k, device=keep.device)).view(-1)
        self.phrases, self.plen = self.phrases[keep], self.plen[keep]
        self.met, self.prog = self.met[keep_rows], self.prog[keep_rows]

    def mask_eos(self, lp: Tensor, eos: int) -> Tensor:
        """No eos for rows that have not met every phrase (lp [rows, V], in place)."""
        lp[:, eos].masked_fill_(~self.all_met(), NEG_INF)
        return lp

    def next_tokens(self) -> Tensor:
        """[rows, 2P]: per unmet phrase, the token that continues the row's progress and the phrase's
        first token (-1: none)."""
        sent = torch.div(torch.arange(self.met.size(0), device=self.met.device), self.width, rounding_mode="floor")
        phrases = self.phrases[sent]
        cont = phrases.gather(2, self.prog[:, :, None].clamp(max=phrases.size(-1) - 1))[:, :, 0]
        both = torch.cat([cont, phrases[:, :, 0]], dim=1)
        return both.masked_fill(torch.cat([self.met, self.met], dim=1), -1)

    def candidates(self, plain: tuple[Tensor, Tensor, Tensor], lp: Tensor, scores: Tensor, seqs: Tensor,
                   k: int, eos: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The candidates of one step, allocated to the banks: (scores, beam, tok, lp), each [nb, 2k]:
        the hypotheses that end (eos) first, then the k that go on, -inf after them.
        plain: unconstrained beam search's best 2k (scores, beam, tok) [nb, 2k]; lp [rows, V] the
        masked log-probabilities; scores [nb, width] the open hypotheses'; seqs [rows, t]."""
        nb, width, vocab = scores.size(0), self.width, lp.size(1)
        # each row's own best token (max's indices: the first maximum, as argmax's, and cheaper on a CPU)
        extra = torch.cat([self.next_tokens(), lp.max(-1).indices[:, None]], dim=1)  # [rows, E]
        extra_scores = (scores.view(-1, 1) + lp.gather(1, extra.clamp(min=0))).masked_fill(extra < 0, NEG_INF)
        e = extra.size(1)
        beam_of = torch.arange(width, device=lp.device)[None, :, None].expand(nb, width, e).reshape(nb, -1)
        all_scores = torch.cat([plain[0], extra_scores.view(nb, -1)], dim=1)
        all_beam = torch.cat([plain[1], beam_of], dim=1)
        all_tok = torch.cat([plain[2], extra.clamp(min=0).view(nb, -1)], dim=1)
        all_scores = self._drop_duplicates(all_scores, all_beam * vocab + all_tok)
        order = all_scores.argsort(dim=1, descending=True, stable=True)
        all_scores, all_beam, all_tok = all_scores.gather(1, order), all_beam.gather(1, order), all_tok.gather(1, order)
        rows = (torch.arange(nb, device=lp.device)[:, None] * width + all_beam).view(-1)
        met, prog = self._step(self._window(seqs[rows], all_tok.view(-1)), self.phrases.repeat_interleave(
            all_tok.size(1), dim=0), self.plen.repeat_interleave(all_tok.size(1), dim=0), self.met[rows])
        plen = self.plen.repeat_interleave(all_tok.size(1), dim=0)
        bank = torch.where(met, plen, prog).sum(-1).view(nb, -1)
        pick = self._allocate(all_scores, bank, all_tok == eos, k)
        out_scores = all_scores.gather(1, pick[0]).masked_fill(~pick[1], NEG_INF)
        out_beam, out_tok = all_beam.gather(1, pick[0]), all_tok.gather(1, pick[0])
        return out_scores, out_beam, out_tok, lp.view(nb, width * vocab).gather(1, out_beam * vocab + out_tok)

    @staticmethod
    def _drop_duplicates(scores: Tensor, key: Tensor) -> Tensor:
        """-inf for every candidate but one of those with the same key (the same row and token)."""
        sorted_key, perm = key.sort(dim=1, stable=True)
        dup = torch.zeros_like(sorted_key, dtype=torch.bool)
        dup[:, 1:] = sorted_key[:, 1:] == sorted_key[:, :-1]
        return scores.masked_fill(torch.zeros_like(dup).scatter_(1, perm, dup), NEG_INF)

    def _allocate(self, scores: Tensor, bank: Tensor, is_eos: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Columns of the candidates (sorted by score, [nb, M]) in the order the step takes them: the
        ones that end, then the k that go on; and whether each of the first 2k is taken."""
        n_banks = self.n_banks
        valid = torch.isfinite(scores)
        onehot = torch.nn.functional.one_hot(bank.clamp(max=n_banks - 1), n_banks) & valid[:, :, None]
        rank = (onehot.cumsum(1) * onehot).sum(-1) - 1  # each candidate's place within its bank
        priority = rank * n_banks + (n_banks - 1 - bank)  # round by round, the fullest bank first
        priority = priority.masked_fill(~valid, torch.iinfo(priority.dtype).max)
        taken = priority.argsort(dim=1, stable=True)  # candidates in the order DBA takes them
        position = torch.empty_like(taken).scatter_(1, taken, torch.arange(taken.size(1), device=taken.device)
                                                    .expand_as(taken).contiguous())
        ends = is_eos & valid & (position < k)
        go_on_order = priority.masked_fill(is_eos, torch.iinfo(priority.dtype).max)
        go_on_rank = torch.empty_like(taken).scatter_(1, go_on_order.argsort(dim=1, stable=True), torch.arange(
            taken.size(1), device=taken.device).expand_as(taken).contiguous())
        goes_on = ~is_eos & valid & (go_on_rank < k)
        group = torch.where(ends, 0, torch.where(goes_on, 1, 2))
        cols = group.argsort(dim=1, stable=True)[:, : 2 * k]  # by score within each group
        return cols, (ends | goes_on).gather(1, cols)
