"""Per-step rules of decoding: what every search (greedy, beam, sampling) applies to the token
log-probabilities of each row before it chooses, given the row's tokens so far and its sentence.

    rules = StepRules.build(src, src_lengths, no_repeat_ngram=3, repetition_penalty=1.2, max_repeat=3,
                            avoid=[[[7, 8]], []])
    lp = rules(lp, seqs, sent)     # lp [N, V], seqs [N, t] tokens so far, sent [N] sentence of each row

- NoRepeatNgram(n): no n-gram of target tokens occurs twice (a token that would complete an n-gram
  already in the row gets -inf), as fairseq's and CTranslate2's no_repeat_ngram_size.
- RepetitionPenalty(p): CTRL's penalty (Keskar et al. 2019) on every token already in the row, as
  CTranslate2 defines it: a score s becomes s * p when s < 0, s / p otherwise. mt applies it to the
  model's log-probabilities (all <= 0, so it multiplies them by p) and renormalises them at every
  step (over the tokens the masks before it left), so the search's scores stay log-probabilities
  (of the penalised distribution).
- RepeatGuard(m): no unit of 1 to 4 tokens stands more than m times in a row (the token that would
  complete its (m+1)-th copy gets -inf), except in sentences whose source itself repeats a unit of
  1 to 4 pieces m+1 times or more. `fired` counts the rows and steps where it took away a token the
  row could still have chosen (a row counts once per step).
- AvoidPhrases(phrases per sentence): no row's tokens ever contain one of its sentence's phrases.

A rule changes nothing in the rows it does not concern, and a search with no rule builds none
(StepRules.build returns None), so its outputs are exactly those of a search without rules.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

NEG_INF = float("-inf")
GUARD_UNITS = (1, 2, 3, 4)  # the unit lengths (tokens) the repeat guard watches


def ban(lp: Tensor, tokens: Tensor, hit: Tensor) -> None:
    """lp [N, V] with lp[n, tokens[n, j]] = -inf wherever hit[n, j] (tokens, hit [N, J]), in place;
    one scatter (the minimum of lp and -inf where hit, +inf elsewhere), no device sync."""
    inf = torch.tensor(float("inf"), dtype=lp.dtype, device=lp.device)
    lp.scatter_reduce_(1, tokens, torch.where(hit, -inf, inf), reduce="amin", include_self=True)


def last_tokens(seqs: Tensor, width: int) -> Tensor:
    """The last `width` tokens of each row of seqs [N, t]: [N, width], -2 (no token) in front of a
    row shorter than that."""
    hist = seqs[:, max(seqs.size(1) - width, 0):]
    if hist.size(1) < width:
        hist = torch.cat([hist.new_full((hist.size(0), width - hist.size(1)), -2), hist], dim=1)
    return hist


class NoRepeatNgram:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, lp: Tensor, seqs: Tensor, sent: Tensor) -> Tensor:
        n, t = self.n, seqs.size(1)
        if t < n or n < 1:  # no complete n-gram yet (n - 1 tokens then the one chosen now)
            return lp
        if n == 1:
            ban(lp, seqs, torch.ones_like(seqs, dtype=torch.bool))
            return lp
        grams = seqs.unfold(1, n, 1)  # [N, t - n + 1, n] every n-gram so far
        last = seqs[:, t - n + 1:]  # [N, n - 1] the n-gram the next token would complete
        hit = (grams[:, :, :-1] == last[:, None, :]).all(-1)
        ban(lp, grams[:, :, -1], hit)
        return lp


class RepetitionPenalty:
    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, lp: Tensor, seqs: Tensor, sent: Tensor) -> Tensor:
        # log-probabilities are <= 0: CTRL's s * p (s < 0) or s / p (s >= 0, here only s == 0, which
        # either leaves unchanged) is s * p; a token seen twice gets the same value twice
        lp.scatter_(1, seqs, lp.gather(1, seqs) * self.penalty)
        log_z = torch.logsumexp(lp, dim=-1, keepdim=True)
        return lp.sub_(log_z.masked_fill(~torch.isfinite(log_z), 0.0))  # a row with no token left stays so


def repeats(seqs: Tensor, lengths: Tensor, times: int) -> Tensor:
    """[B] bool: rows of seqs [B, S] (the first lengths[b] tokens real) holding a unit of 1 to 4
    tokens `times` times or more in a row."""
    found = torch.zeros(seqs.size(0), dtype=torch.bool, device=seqs.device)
    for u in GUARD_UNITS:
        span = u * times
        if seqs.size(1) < span:
            break
        win = seqs.unfold(1, span, 1)  # [B, S - span + 1, span]
        periodic = (win[:, :, u:] == win[:, :, :-u]).all(-1)
        inside = torch.arange(win.size(1), device=seqs.device)[None, :] + span <= lengths[:, None]
        found |= (periodic & inside).any(1)
    return found


class RepeatGuard:
    """No unit of 1 to 4 tokens more than `max_repeat` times in a row, in the sentences `guarded`
    ([B] bool, by sentence)."""

    def __init__(self, max_repeat: int, guarded: Tensor) -> None:
        self.max_repeat, self.guarded = max_repeat, guarded
        self.fired = torch.zeros((), dtype=torch.long, device=guarded.device)  # a tensor: no sync per step

    def __call__(self, lp: Tensor, seqs: Tensor, sent: Tensor) -> Tensor:
        t, toks, hits = seqs.size(1), [], []
        for u in GUARD_UNITS:
            span = (self.max_repeat + 1) * u - 1  # the tokens before the one that would complete copy m + 1
            if t < span:
                break
            win = seqs[:, t - span:]
            hits.append((win[:, u:] == win[:, :-u]).all(1))
            toks.append(win[:, span - u])
        if not hits:
            return lp
        tok, hit = torch.stack(toks, 1), torch.stack(hits, 1) & self.guarded[sent][:, None]
        self.fired += (hit & torch.isfinite(lp.gather(1, tok))).any(1).sum()
        ban(lp, tok, hit)
        return lp


class AvoidPhrases:
    """phrases[i]: the token sequences sentence i's output must never contain."""

    def __init__(self, phrases: Sequence[Sequence[Sequence[int]]], device: torch.device) -> None:
        flat = [(i, list(p)) for i, ps in enumerate(phrases) for p in ps if len(p)]
        self.width = max((len(p) for _, p in flat), default=1) - 1  # the longest phrase's tokens before its last
        pre = torch.full((len(flat), max(self.width, 1)), -1, dtype=torch.long)
        wild = torch.ones_like(pre, dtype=torch.bool)  # positions any token matches (shorter phrases)
        for j, (_, p) in enumerate(flat):
            if len(p) > 1:  # right-aligned: the tokens that must precede the banned last one
                pre[j, pre.size(1) - len(p) + 1:] = torch.tensor(p[:-1])
                wild[j, pre.size(1) - len(p) + 1:] = False
        self.pre, self.wild = pre.to(device), wild.to(device)
        self.last = torch.tensor([p[-1] for _, p in flat], dtype=torch.long, device=device)
        self.sent = torch.tensor([i for i, _ in flat], dtype=torch.long, device=device)

    def __call__(self, lp: Tensor, seqs: Tensor, sent: Tensor) -> Tensor:
        if self.last.numel() == 0:
            return lp
        hist = last_tokens(seqs, self.pre.size(1))  # -2 in front matches no phrase token (only wildcards)
        match = ((hist[:, None, :] == self.pre[None]) | self.wild[None]).all(-1)  # [N, P]
        hit = match & (sent[:, None] == self.sent[None, :])
        ban(lp, self.last[None, :].expand_as(hit), hit)
        return lp


class StepRules:
    """The rules of one search call, applied in order (the penalty last: it renormalises what the
    bans left)."""

    def __init__(self, rules: list, guard: RepeatGuard | None) -> None:
        self.rules, self.guard = rules, guard

    @classmethod
    def build(cls, src: Tensor, src_lengths: Tensor, no_repeat_ngram: int = 0, repetition_penalty: float = 1.0,
              max_repeat: int = 0, avoid: Sequence[Sequence[Sequence[int]]] | None = None) -> StepRules | None:
        rules: list = []
        guard = None
        if max_repeat > 0:
            guarded = ~repeats(src, src_lengths.to(src.device), max_repeat + 1)
            if bool(guarded.any()):
                guard = RepeatGuard(max_repeat, guarded)
                rules.append(guard)
        if no_repeat_ngram > 0:
            rules.append(NoRepeatNgram(no_repeat_ngram))
        if avoid is not None and any(any(len(p) for p in ps) for ps in avoid):
            if len(avoid) != src.size(0):
                raise ValueError(f"{len(avoid)} avoid lists for {src.size(0)} sentences")
            rules.append(AvoidPhrases(avoid, src.device))
        if repetition_penalty != 1.0:
            rules.append(RepetitionPenalty(repetition_penalty))
        return cls(rules, guard) if rules else None

    def __call__(self, lp: Tensor, seqs: Tensor, sent: Tensor) -> Tensor:
        for rule in self.rules:
            lp = rule(lp, seqs, sent)
        return lp

    @property
    def guard_fired(self) -> int:
        return int(self.guard.fired) if self.guard is not None else 0
