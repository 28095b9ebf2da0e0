"""Decoding: greedy, batched beam search and sampling behind one `Search` interface.

    hyps = search(model, src, src_lengths)   # list (per sentence) of n-best Hypothesis

Every search encodes the batch once, asks the model for a DecoderState and then calls only
`model.decode_step` and `state.select`: it never looks at the architecture. Sentences that
finish leave the batch, so the tensors shrink as the search goes on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from mt import MTError
from mt.config import DecodeConfig
from mt.decode.constraints import Constraints, contains
from mt.decode.rules import NEG_INF, StepRules
from mt.models.base import DecoderState, Seq2Seq



@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without bos/eos
    score: float  # log-probability after the length penalty (what the search ranks by)
    log_prob: float  # sum of token log-probabilities (eos included)
    attention: Tensor | None = None  # [len(tokens) + 1, source length] (the eos step included)
    token_scores: list[float] | None = None  # log-probability of each token, then of eos


def forced_prefixes(prefixes: Sequence[Sequence[int]] | None, batch: int, device: torch.device) -> Tensor | None:
    """Target prefixes (token ids, one list per sentence, [] for none) -> [batch, longest] padded with
    -1, or None when no sentence has one."""
    if prefixes is None or not any(prefixes):
        return None
    if len(prefixes) != batch:
        raise ValueError(f"{len(prefixes)} prefixes for {batch} sentences")
    forced = torch.full((batch, max(len(p) for p in prefixes)), -1, dtype=torch.long)
    for i, p in enumerate(prefixes):
        forced[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    return forced.to(device)


class LengthPenalty:
    """score = log_prob / lp(L), L = hypothesis length with eos.

    gnmt: lp = ((5 + L) / 6) ** alpha (Wu et al. 2016);  d2l: lp = L ** alpha;  none: lp = 1.
    """

    def __init__(self, kind: str = "gnmt", alpha: float = 0.6) -> None:
        self.kind, self.alpha = kind, alpha

    def __call__(self, length: Tensor | float) -> Tensor | float:
        if self.kind == "none" or self.alpha == 0:
            return torch.ones_like(length) if isinstance(length, Tensor) else 1.0
        base = (5.0 + length) / 6.0 if self.kind == "gnmt" else length
        return base**self.alpha


class Search:
    """Shared setup and finalising. Subclasses implement `_search` (the step loop).

    Hooks, each one part of the search that a subclass (or benchmarks/decode_ablations.py, which
    measures each against its alternative) may replace without touching the rest:
    `grad_mode()` the autograd mode the whole search runs under (torch.inference_mode());
    `start_state(model, src, src_lengths, max_lens)` encodes the batch and makes the decoder state
    the step loop starts from (one row per sentence).

    Target prefixes: `search(model, src, src_lengths, prefixes)` forces sentence i's output to start
    with prefixes[i] (token ids; [] for none). The search decodes the prefix's tokens as if it had
    chosen them, then continues as usual. The prefix is part of the hypothesis: its tokens are in
    `tokens`, its log-probabilities in `log_prob` and `score` (as `mt score` of the whole output
    gives them), and it counts toward min_len, the length penalty and the length limit. A prefix as
    long as the limit (a * source length + b) or longer raises that sentence's limit to the
    prefix's length: the output is the prefix as it is, then eos. A prefix the model cannot
    represent (more than its target positions) is an MTError.

    Under control (mt.decode.rules, mt.decode.constraints): no_repeat_ngram, repetition_penalty and
    max_repeat (the loop guard; `guard_fired` counts its work over every call) apply at every step of
    every search, as does `avoid` (per sentence, phrases of token ids its output never contains);
    `constraints` (per sentence, phrases its output must contain) need beam search, which then
    allocates its beam to banks (DBA). With all of them off a search runs as it did without them.
    """

    def __init__(
        self,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        min_len: int = 0,
        n_best: int = 1,
        return_attention: bool = False,
        max_len_cap: int | None = None,
        no_repeat_ngram: int = 0,
        repetition_penalty: float = 1.0,
        max_repeat: int = 0,
    ) -> None:
        self.max_len_a, self.max_len_b, self.min_len = max_len_a, max_len_b, min_len
        self.max_len_cap = max_len_cap  # a bound on a * source length + b (mt serve's --max-output-tokens)
        self.n_best = n_best
        self.return_attention = return_attention
        self.no_repeat_ngram, self.repetition_penalty, self.max_repeat = no_repeat_ngram, repetition_penalty, max_repeat
        #: rows and steps where the repeat guard took a token away, over every call (mt.decode.rules)
        self.guard_fired = 0

    #: decoder rows per source sentence (beam size, samples): what a batch budget is divided by
    rows_per_sentence = 1
    #: whether the search can meet constraints (beam search: dynamic beam allocation)
    takes_constraints = False

    def __call__(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor,
                 prefixes: Sequence[Sequence[int]] | None = None,
                 constraints: Sequence[Sequence[Sequence[int]]] | None = None,
                 avoid: Sequence[Sequence[Sequence[int]]] | None = None) -> list[list[Hypothesis]]:
        with self.grad_mode():
            forced = forced_prefixes(prefixes, src.size(0), src.device)
            max_lens = self.max_lengths(model, src_lengths)
            if forced is not None:
                prefix_lens = (forced >= 0).sum(dim=1)
                limit = model.max_tgt_positions
                if limit is not None and int(prefix_lens.max()) > limit - 1:
                    raise MTError(f"a target prefix of {int(prefix_lens.max())} tokens is longer than the model's "
                                  f"{limit - 1} target positions")
                max_lens = torch.maximum(max_lens, prefix_lens)
            rules = StepRules.build(src, src_lengths, self.no_repeat_ngram, self.repetition_penalty, self.max_repeat,
                                    avoid)
            cons = None
            if Constraints.active(constraints):
                if not self.takes_constraints:
                    raise MTError("constraints (phrases the output must contain) need beam search")
                if len(constraints) != src.size(0):
                    raise ValueError(f"{len(constraints)} constraint lists for {src.size(0)} sentences")
                cons = Constraints(constraints, max_lens)
            state = self.start_state(model, src, src_lengths, max_lens)
            if rules is None and cons is None:  # exactly the search without rules
                return self._search(model, state, max_lens, src_lengths, forced)
            hyps = self._search(model, state, max_lens, src_lengths, forced, rules=rules, cons=cons)
            self.guard_fired += rules.guard_fired if rules is not None else 0
            return hyps if cons is None else [met_first(h, c)[: self.n_best] for h, c in zip(hyps, constraints)]

    def grad_mode(self) -> contextlib.AbstractContextManager:
        """Hook: the autograd mode the search runs under. Nothing a search computes is ever
        differentiated, so it records nothing and its tensors skip autograd's bookkeeping."""
        return torch.inference_mode()

    def start_state(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_lens: Tensor) -> DecoderState:
        """Hook: the source encoded once per sentence, and the decoder state for hypotheses of up
        to max_lens tokens (eos after them) that the step loop starts from."""
        enc = model.encode(src, src_lengths)
        return model.init_state(enc, int(max_lens.max()) + 1, need_attention=self.return_attention)

    def max_lengths(self, model: Seq2Seq, src_lengths: Tensor) -> Tensor:
        """Longest hypothesis (tokens before eos) per sentence: a * source length + b."""
        lens = (src_lengths.float() * self.max_len_a + self.max_len_b).floor().long()
        lens = lens.clamp(min=max(self.min_len, 1))
        if self.max_len_cap is not None:
            lens = lens.clamp(max=self.max_len_cap)
        if model.max_tgt_positions is not None:
            lens = lens.clamp(max=model.max_tgt_positions - 1)
        return lens

    def _search(
        self, model: Seq2Seq, state: DecoderState, max_lens: Tensor, src_lengths: Tensor, forced: Tensor | None = None
    ) -> list[list[Hypothesis]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _mask_scores(self, lp: Tensor, step: int, max_lens: Tensor, model: Seq2Seq, first_limit: int,
                     forced: Tensor | None = None, rules: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Never pad or bos; no eos before min_len; only eos once a row reaches its max length
        (max_lens is per row). No row reaches its limit before step `first_limit` (the smallest
        limit of the batch): until then the rows are not looked at (a device sync on CUDA).
        forced [N, P] (-1: none): a row whose prefix reaches this step gets only its prefix token,
        with the model's log-probability. rules: the step's rules (mt.decode.rules) bound to the
        rows' tokens, applied after min_len and before the prefixes (which they do not change)."""
        eos = model.eos_id
        lp[:, model.pad_id] = NEG_INF
        lp[:, model.bos_id] = NEG_INF
        if step < self.min_len:
            lp[:, eos] = NEG_INF
        rows = None
        if forced is not None and step < forced.size(1):
            tok = forced[:, step]
            rows = (tok >= 0).nonzero()[:, 0]
            kept = lp[rows, tok[rows]]
        if rules is not None:
            lp = rules(lp)
        if rows is not None and rows.numel():
            lp[rows] = NEG_INF
            lp[rows, tok[rows]] = kept
        if step < first_limit:
            return lp
        at_max = max_lens <= step
        if bool(at_max.any()):
            eos_lp = lp[:, eos].clone()
            lp[at_max] = NEG_INF
            lp[at_max, eos] = torch.where(torch.isfinite(eos_lp[at_max]), eos_lp[at_max], 0.0)
        return lp

    @staticmethod
    def _attention(rows: Tensor | None, src_len: int) -> Tensor | None:
        return None if rows is None else rows[:, :src_len].float().cpu()


class _RowSearch(Search):
    """Each row continues with one chosen token per step (greedy, sampling)."""

    def _choose(self, lp: Tensor) -> Tensor:  # [N, V] -> [N]
        raise NotImplementedError  # pragma: no cover - abstract

    def _search(self, model, state, max_lens, src_lengths, forced=None, rules=None, cons=None):
        b, n, eos = src_lengths.size(0), self.rows_per_sentence, model.eos_id
        device = src_lengths.device
        if n > 1:
            state = state.expand(n)
        rows = torch.arange(b * n, device=device)  # original row id of each active row
        row_max = max_lens.repeat_interleave(n)
        row_forced = forced.repeat_interleave(n, dim=0) if forced is not None else None
        prev = torch.full((b * n,), model.bos_id, dtype=torch.long, device=device)
        seqs = torch.empty((b * n, 0), dtype=torch.long, device=device)
        token_lps = torch.empty((b * n, 0), device=device)
        scores = torch.zeros(b * n, device=device)
        attn_rows: Tensor | None = None
        done: list[list[Hypothesis]] = [[] for _ in range(b)]
        src_len, first_limit = src_lengths.tolist(), int(max_lens.min())
        step = 0
        while rows.numel():
            lp, attn = model.decode_step(prev, state)
            bound = None if rules is None else lambda x: rules(x, seqs, torch.div(rows, n, rounding_mode="floor"))
            lp = self._mask_scores(lp, step, row_max, model, first_limit, row_forced, bound)
            tok = self._choose(lp)
            tok_lp = lp.gather(1, tok[:, None])
            scores = scores + tok_lp[:, 0]
            seqs = torch.cat([seqs, tok[:, None]], dim=1)
            token_lps = torch.cat([token_lps, tok_lp], dim=1)
            if attn is not None and self.return_attention:
                attn_rows = attn[:, None] if attn_rows is None else torch.cat([attn_rows, attn[:, None]], dim=1)
            finished = tok == eos
            if bool(finished.any()):
                idx = finished.nonzero()[:, 0]
                # one transfer per tensor, not one per hypothesis (each is a device sync on CUDA)
                for k, (row, raw, tokens, tok_scores) in enumerate(zip(
                        rows[idx].tolist(), scores[idx].tolist(), seqs[idx, :-1].tolist(), token_lps[idx].tolist())):
                    sent = row // n
                    attention = self._attention(attn_rows[idx[k]] if attn_rows is not None else None, src_len[sent])
                    done[sent].append(Hypothesis(tokens, raw, raw, attention, tok_scores))
                # finished sentences leave the batch
                keep = (~finished).nonzero()[:, 0]
                rows, row_max, tok, seqs, scores = rows[keep], row_max[keep], tok[keep], seqs[keep], scores[keep]
                token_lps = token_lps[keep]
                row_forced = row_forced[keep] if row_forced is not None else None
                attn_rows = attn_rows[keep] if attn_rows is not None else None
                state.select_(keep)
            prev = tok
            step += 1
        return [sorted(h, key=lambda x: -x.score)[: self.n_best] for h in done]


class GreedySearch(_RowSearch):
    def _choose(self, lp: Tensor) -> Tensor:
        return lp.max(dim=-1).indices  # the first maximum, as argmax's, and cheaper on a CPU


class SamplingSearch(_RowSearch):
    """Ancestral sampling with temperature, top-k and nucleus (top-p) filtering; n_best samples per
    sentence, ranked by their model log-probability."""

    def __init__(self, temperature: float = 1.0, topk: int = 0, topp: float = 1.0, seed: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature, self.topk, self.topp = temperature, topk, topp
        self.rows_per_sentence = self.n_best  # samples per sentence
        self.seed = seed

    def __call__(self, model, src, src_lengths, prefixes=None, constraints=None, avoid=None):
        self.generator = torch.Generator(device=src.device).manual_seed(self.seed)
        return super().__call__(model, src, src_lengths, prefixes, constraints, avoid)

    def _choose(self, lp: Tensor) -> Tensor:
        logits = lp / self.temperature
        if self.topk > 0:
            kth = logits.topk(min(self.topk, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        if self.topp < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.topp  # keep the smallest prefix reaching topp
            sorted_logits = sorted_logits.masked_fill(drop, NEG_INF)
            logits = torch.full_like(logits, NEG_INF).scatter(1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]


@dataclass
class _Beams:
    """The open hypotheses of the sentences still searched, sentence-major: `width` rows per
    sentence (1 before the first step, when a sentence's beams would all be the same; then beam)."""

    sent_ids: Tensor  # [nb] original sentence of each active sentence
    sent_max: Tensor  # [nb] its longest hypothesis (tokens before eos)
    n_done: Tensor  # [nb] its finished hypotheses
    scores: Tensor  # [nb, width] log-probability of each open hypothesis
    prev: Tensor  # [nb * width] each row's last token
    seqs: Tensor  # [nb * width, steps] tokens so far
    token_lps: Tensor  # [nb * width, steps] their log-probabilities
    forced: Tensor | None  # [nb, P] target prefixes, -1 padded (None: no prefixes)
    attn_rows: Tensor | None = None  # [nb * width, steps, S] attention so far (when asked for)
    width: int = 1

    @classmethod
    def start(cls, max_lens: Tensor, bos: int, forced: Tensor | None) -> _Beams:
        b, device = max_lens.size(0), max_lens.device
        return cls(
            sent_ids=torch.arange(b, device=device),
            sent_max=max_lens.clone(),
            n_done=torch.zeros(b, dtype=torch.long, device=device),
            scores=torch.zeros((b, 1), device=device),
            prev=torch.full((b,), bos, dtype=torch.long, device=device),
            seqs=torch.empty((b, 0), dtype=torch.long, device=device),
            token_lps=torch.empty((b, 0), device=device),
            forced=forced,
        )

    def row_forced(self) -> Tensor | None:
        """The target prefixes per row: [nb * width, P]."""
        return self.forced.repeat_interleave(self.width, dim=0) if self.forced is not None else None

    def keep_sentences(self, keep: Tensor, k: int) -> None:
        """Only sentences `keep` (indices, in order) go on, with their k rows each."""
        keep_rows = (keep[:, None] * k + torch.arange(k, device=keep.device)).view(-1)
        self.sent_ids, self.sent_max, self.scores = self.sent_ids[keep], self.sent_max[keep], self.scores[keep]
        self.n_done = self.n_done[keep]
        self.prev, self.seqs, self.token_lps = self.prev[keep_rows], self.seqs[keep_rows], self.token_lps[keep_rows]
        self.forced = self.forced[keep] if self.forced is not None else None
        self.attn_rows = self.attn_rows[keep_rows] if self.attn_rows is not None else None


@dataclass
class _Candidates:
    """The best 2 x beam continuations of each sentence at one step, best first: [nb, 2 x beam]."""

    scores: Tensor  # hypothesis log-probability with the token (-inf pads a vocabulary smaller than 2 x beam)
    beam: Tensor  # the row (within its sentence) each one continues
    tok: Tensor  # its token
    lp: Tensor  # the token's log-probability
    is_eos: Tensor  # the token is eos: the hypothesis ends


class BeamSearch(Search):
    """Batched beam search: batch x beam rows in one tensor, top-k over beam x vocab.

    2 x beam candidates per sentence and step, so hypotheses that end (eos among the top
    `beam` candidates) are replaced by the best open ones. A sentence stops when `beam`
    hypotheses have finished (early_stop) or, with early_stop=False, when no open hypothesis
    can beat the `beam`-th finished one any more (exact with respect to the length penalty).
    Besides Search's hooks, `top(scores, n)` picks the best candidates of every sentence.
    """

    #: records the search tree when set (mt.decode.trace.SearchTrace); None: nothing recorded or spent
    trace = None
    takes_constraints = True

    def __init__(
        self,
        beam: int = 5,
        len_penalty: LengthPenalty | None = None,
        early_stop: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.beam = self.rows_per_sentence = beam
        self.lp = len_penalty or LengthPenalty("none")
        self.early_stop = early_stop

    def top(self, scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Hook: the n best entries of each row of scores [sentences, candidates], best first, and
        their indices; one topk over the whole tensor."""
        return scores.topk(n, dim=1)

    def _search(self, model, state, max_lens, src_lengths, forced=None, rules=None, cons=None):
        k = self.beam
        # the first step runs once per sentence; the state is expanded to batch x beam rows after it
        beams = _Beams.start(max_lens, model.bos_id, forced)
        done: list[list[Hypothesis]] = [[] for _ in range(src_lengths.size(0))]
        src_len, first_limit = src_lengths.tolist(), int(max_lens.min())
        if self.trace is not None:
            self.trace.start(src_lengths.size(0), k, self.lp)
        step = 0
        while beams.sent_ids.numel():
            lp, attn = model.decode_step(beams.prev, state)  # [nb * width, V]
            sent_max = beams.sent_max.repeat_interleave(beams.width)
            lp = self._mask_scores(lp, step, sent_max, model, first_limit, beams.row_forced(),
                                   self._bound_rules(beams, rules, cons, model.eos_id))
            if attn is not None and self.return_attention:
                attn_all = attn[:, None] if beams.attn_rows is None else torch.cat([beams.attn_rows, attn[:, None]], 1)
            else:
                attn_all = None
            if cons is None:
                cand = self._candidates(beams, lp, model.eos_id)
            else:
                cand = self._constrained_candidates(beams, lp, model.eos_id, cons)
            # hypotheses that end here: eos among the first k candidates, with a finite score
            ends = cand.is_eos & torch.isfinite(cand.scores)
            ends[:, k:] = False
            if bool(ends.any()):
                self._collect(ends, cand, beams, attn_all, src_len, step, done)
                beams.n_done = beams.n_done + ends.sum(dim=1)
            rows = self._advance(beams, cand, attn_all)
            if self.trace is not None:
                self.trace.step(step, beams, cand, ends, rows)
            if cons is not None:
                cons.advance(rows, beams.seqs, k)
            if beams.width < k:  # after the first step: each sentence's row becomes its k beams
                state = state.expand(k)  # the model may share static tensors among beams
                beams.width = k
            else:
                state.select_(rows, same_sources=True)
            finished = self._finished(beams, done)
            if bool(finished.any()):  # finished sentences leave the batch
                keep = (~finished).nonzero()[:, 0]
                beams.keep_sentences(keep, k)
                state.keep_sentences_(keep, k)
                if cons is not None:
                    cons.keep_sentences(keep, k)
            step += 1
        n_best = self.n_best if cons is None else None  # with constraints: cut after met_first
        return [sorted(h, key=lambda x: -x.score)[:n_best] for h in done]

    def _candidates(self, beams: _Beams, lp: Tensor, eos: int) -> _Candidates:
        """Each sentence's best 2 x beam continuations of its open hypotheses (lp [nb * width, V]:
        the masked token log-probabilities)."""
        k, nb, width, vocab = self.beam, beams.sent_ids.numel(), beams.width, lp.size(-1)
        cand = (beams.scores.view(-1, 1) + lp).view(nb, width * vocab)
        top_scores, top_idx = self.top(cand, min(2 * k, width * vocab))  # [nb, 2k], sorted
        if top_scores.size(1) < 2 * k:  # fewer candidates than 2k (a vocabulary smaller than 2k)
            short = 2 * k - top_scores.size(1)
            top_scores = torch.cat([top_scores, top_scores.new_full((nb, short), NEG_INF)], dim=1)
            top_idx = torch.cat([top_idx, top_idx.new_zeros((nb, short))], dim=1)
        top_lp = lp.view(nb, width * vocab).gather(1, top_idx)  # each candidate's token log-probability
        top_tok = top_idx % vocab
        top_beam = torch.div(top_idx, vocab, rounding_mode="floor")
        return _Candidates(top_scores, top_beam, top_tok, top_lp, top_tok == eos)

    @staticmethod
    def _bound_rules(beams: _Beams, rules: StepRules | None, cons: Constraints | None,
                     eos: int) -> Callable[[Tensor], Tensor] | None:
        """The step's rules on the beams' rows, and no eos for a hypothesis that has not met its
        constraints (the length limit, applied after them, may still end it)."""
        if rules is None and cons is None:
            return None

        def bound(lp: Tensor) -> Tensor:
            if rules is not None:
                lp = rules(lp, beams.seqs, beams.sent_ids.repeat_interleave(beams.width))
            return cons.mask_eos(lp, eos) if cons is not None else lp

        return bound

    def _constrained_candidates(self, beams: _Beams, lp: Tensor, eos: int, cons: Constraints) -> _Candidates:
        """The step's candidates under constraints: dynamic beam allocation (mt.decode.constraints)."""
        plain = self._candidates(beams, lp, eos)
        scores, beam, tok, tok_lp = cons.candidates((plain.scores, plain.beam, plain.tok), lp, beams.scores,
                                                    beams.seqs, self.beam, eos)
        return _Candidates(scores, beam, tok, tok_lp, tok == eos)

    def _advance(self, beams: _Beams, cand: _Candidates, attn_all: Tensor | None) -> Tensor:
        """The best k candidates that do not end become the open hypotheses (k rows per sentence);
        returns the row of the step's batch that each new row continues."""
        nb, width = beams.sent_ids.numel(), beams.width
        open_scores = cand.scores.masked_fill(cand.is_eos, NEG_INF)
        beams.scores, pick = self.top(open_scores, self.beam)  # [nb, k]
        beam_src = cand.beam.gather(1, pick)
        beams.prev = cand.tok.gather(1, pick).view(-1)
        rows = (torch.arange(nb, device=beam_src.device)[:, None] * width + beam_src).view(-1)
        beams.seqs = torch.cat([beams.seqs[rows], beams.prev[:, None]], dim=1)
        beams.token_lps = torch.cat([beams.token_lps[rows], cand.lp.gather(1, pick).view(-1, 1)], dim=1)
        beams.attn_rows = attn_all[rows] if attn_all is not None else None
        return rows

    def _collect(self, ends: Tensor, cand: _Candidates, beams: _Beams, attn_all: Tensor | None, src_len: list[int],
                 step: int, done: list[list[Hypothesis]]) -> None:
        """The hypotheses that end at this step, into `done` (per original sentence)."""
        length_norm = float(self.lp(float(step + 1)))
        i, j = ends.nonzero().unbind(1)
        rows = i * beams.width + cand.beam[i, j]
        tok_scores = torch.cat([beams.token_lps[rows], cand.lp[i, j][:, None]], dim=1)
        # one transfer per tensor, not one per hypothesis (each is a device sync on CUDA)
        for n, (sent, raw, tokens, per_token) in enumerate(zip(beams.sent_ids[i].tolist(), cand.scores[i, j].tolist(),
                                                               beams.seqs[rows].tolist(), tok_scores.tolist())):
            attention = self._attention(attn_all[rows[n]] if attn_all is not None else None, src_len[sent])
            done[sent].append(Hypothesis(tokens, raw / length_norm, raw, attention, per_token))

    def _finished(self, beams: _Beams, done: list[list[Hypothesis]]) -> Tensor:
        """[nb] bool: sentences whose search is over."""
        k, scores = self.beam, beams.scores
        finished = ~torch.isfinite(scores[:, 0])  # no open hypothesis left
        full = beams.n_done >= k
        if self.early_stop:
            return finished | full
        for i in full.nonzero()[:, 0].tolist():
            # an open hypothesis only loses log-probability; its best possible score takes the
            # largest length penalty it could still get (the open scores are sorted)
            bound = float(scores[i, 0]) / float(self.lp(float(int(beams.sent_max[i]) + 1)))
            kth = sorted((h.score for h in done[int(beams.sent_ids[i])]), reverse=True)[k - 1]
            finished[i] |= kth >= bound
        return finished


def met_first(hyps: list[Hypothesis], phrases: Sequence[Sequence[int]]) -> list[Hypothesis]:
    """An n-best list with the hypotheses that contain every phrase before those that do not (the
    length limit ended them), each group best first."""
    return sorted(hyps, key=lambda h: not all(contains(h.tokens, p) for p in phrases if len(p)))


def build_search(cfg: DecodeConfig, return_attention: bool = False, max_len_cap: int | None = None) -> Search:
    common = dict(
        max_len_cap=max_len_cap,
        max_len_a=cfg.max_len_a,
        max_len_b=cfg.max_len_b,
        min_len=cfg.min_len,
        n_best=cfg.n_best,
        return_attention=return_attention,
        no_repeat_ngram=cfg.no_repeat_ngram,
        repetition_penalty=cfg.repetition_penalty,
        max_repeat=cfg.max_repeat,
    )
    if cfg.search == "greedy":
        return GreedySearch(**common)
    if cfg.search == "sampling":
        return SamplingSearch(temperature=cfg.temperature, topk=cfg.topk, topp=cfg.topp, seed=cfg.seed, **common)
    return BeamSearch(
        beam=cfg.beam, len_penalty=LengthPenalty(cfg.len_penalty, cfg.alpha), early_stop=cfg.early_stop, **common
    )
