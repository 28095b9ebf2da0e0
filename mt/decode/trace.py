"""Looking inside a translation: the beam search's tree, and the cross-attention per layer and head.

    trace = SearchTrace()
    search.trace = trace                 # a BeamSearch; None (the default) records nothing
    hyps = search(model, src, src_lengths)
    tree = trace.trees[0]                # the first sentence's tree
    tree.best_path(), tree.to_dict(vocab.pieces)

The tree is recorded by the beam search itself (mt.decode.search.BeamSearch calls the recorder
once when it starts and once per step, after choosing the step's open hypotheses), so it is the
search's own record, not a second search. Per step and sentence it keeps the 2 x beam candidates
the search chose from, best first: the open hypothesis each continues (`parent`, a row of the
previous step's kept hypotheses; the start, bos, is row 0 of step -1), its token, the token's
log-probability and the hypothesis's (cumulative log-probability), whether it was kept as one of the
step's `beam` open hypotheses (its row), and whether it finished there (eos among the best `beam`
candidates) with its score after the length penalty, as the search ranks finished hypotheses. The
best path of the tree is the finished hypothesis with the highest score, the first one found on
ties, exactly as the search sorts its n-best list: its tokens and score are the search's output.

`attention_heads` gives the cross-attention of a given translation (teacher-forced) for every
decoder layer and head of a Transformer, or the one attention of an RNN or an ensemble (their
mean attention, as decode_step returns it): what the web page of `mt serve` draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from mt.data.batching import source_tensor
from mt.data.vocab import BOS_ID
from mt.models.base import Seq2Seq


@dataclass
class Candidate:
    """One continuation the search considered at a step."""

    parent: int  # row of the previous step's kept hypotheses it continues (0 at step 0: the start)
    token: int
    log_prob: float  # the token's log-probability
    score: float  # the hypothesis's log-probability (the sum of its tokens')
    kept: int | None = None  # its row among the step's open hypotheses; None: dropped (or finished)
    final: float | None = None  # finished here: its score after the length penalty


@dataclass
class SearchTree:
    """One sentence's beam search, step by step (see the module's docstring)."""

    beam: int
    length_penalty: tuple[str, float]  # (kind, alpha)
    steps: list[list[Candidate]] = field(default_factory=list)

    def finished(self) -> list[tuple[int, int]]:
        """(step, candidate) of the finished hypotheses in the order the search collected them."""
        return [(s, c) for s, cands in enumerate(self.steps) for c, x in enumerate(cands) if x.final is not None]

    def ranked(self) -> list[tuple[int, int]]:
        """The finished hypotheses best first, ties in collection order (the search's n-best order)."""
        return sorted(self.finished(), key=lambda sc: -self.steps[sc[0]][sc[1]].final)  # type: ignore[operator]

    def path(self, step: int, cand: int) -> list[int]:
        """The candidate index at each step 0..step of the hypothesis that ends with (step, cand)."""
        out = [cand]
        parent = self.steps[step][cand].parent
        for s in range(step - 1, -1, -1):
            c = next(i for i, x in enumerate(self.steps[s]) if x.kept == parent)
            out.append(c)
            parent = self.steps[s][c].parent
        return out[::-1]

    def best_path(self, returned: Sequence[int] | None = None) -> list[int]:
        """The returned hypothesis's candidate index per step ([] when nothing finished): the best
        ranked one, or with `returned` (the tokens a caller returned, when it reorders the n-best
        list as constraints do) the best ranked one with those tokens."""
        for step, cand in self.ranked():
            path = self.path(step, cand)
            if returned is None or self.tokens(path) == list(returned):
                return path
        return []

    def tokens(self, path: Sequence[int]) -> list[int]:
        """A path's tokens without its final eos."""
        return [self.steps[s][c].token for s, c in enumerate(path)][:-1]

    def to_dict(self, pieces: Callable[[list[int]], list[str]], n_best: int = 1,
                returned: Sequence[int] | None = None) -> dict[str, Any]:
        """JSON-ready: per step the candidates (parent, piece, token, log_prob, score, kept, finished,
        final_score), the returned path (`best`: candidate per step; see best_path), its score, and
        the n-best ends by score (step, candidate)."""
        steps = []
        for cands in self.steps:
            names = pieces([x.token for x in cands])
            steps.append([{"parent": x.parent, "piece": p, "token": x.token, "log_prob": x.log_prob,
                           "score": x.score, "kept": x.kept, "finished": x.final is not None,
                           "final_score": x.final} for x, p in zip(cands, names)])
        ranked = self.ranked()
        best = self.best_path(returned)
        return {"beam": self.beam, "length_penalty": {"kind": self.length_penalty[0], "alpha": self.length_penalty[1]},
                "steps": steps, "best": best,
                "score": self.steps[len(best) - 1][best[-1]].final if best else None,
                "nbest": [list(sc) for sc in ranked[:n_best]]}


class SearchTrace:
    """The recorder a BeamSearch calls (its `trace`); `trees` holds one SearchTree per sentence of
    the search's last call, in the order of its batch."""

    def __init__(self) -> None:
        self.trees: list[SearchTree] = []
        self._penalty: Callable[[float], Any] | None = None

    def start(self, sentences: int, beam: int, len_penalty: Any) -> None:
        """A search call begins: `sentences` empty trees. len_penalty: the search's LengthPenalty."""
        self._penalty = len_penalty
        kind = (getattr(len_penalty, "kind", "none"), float(getattr(len_penalty, "alpha", 0.0)))
        self.trees = [SearchTree(beam, kind) for _ in range(sentences)]

    def step(self, step: int, beams: Any, cand: Any, ends: Tensor, rows: Tensor) -> None:
        """One step of the search, after it chose the open hypotheses: beams (its _Beams, whose
        scores and prev are the new open hypotheses'; width and sent_ids still the step's), cand
        (its _Candidates [nb, 2 x beam]), ends ([nb, 2 x beam] the candidates that finish here) and
        rows ([nb * beam] the step's row each new open hypothesis continues)."""
        nb, width = beams.sent_ids.numel(), beams.width
        k = beams.scores.size(1)
        length_norm = float(self._penalty(float(step + 1))) if self._penalty is not None else 1.0
        # one transfer per tensor
        sents, parents, toks, lps, scores, finished = (t.tolist() for t in (
            beams.sent_ids, cand.beam, cand.tok, cand.lp, cand.scores, ends))
        kept_parent = (rows.view(nb, k) - torch.arange(nb, device=rows.device)[:, None] * width).tolist()
        kept_tok, kept_score = beams.prev.view(nb, k).tolist(), beams.scores.tolist()
        for i, sent in enumerate(sents):
            cands = []
            for parent, tok, lp, score, ends_here in zip(parents[i], toks[i], lps[i], scores[i], finished[i]):
                if math.isfinite(score):
                    cands.append(Candidate(parent, tok, lp, score, final=score / length_norm if ends_here else None))
            for row, (parent, tok, score) in enumerate(zip(kept_parent[i], kept_tok[i], kept_score[i])):
                if math.isfinite(score):
                    match = next(x for x in cands if x.parent == parent and x.token == tok and x.kept is None
                                 and x.final is None)
                    match.kept = row
            self.trees[sent].steps.append(cands)


# -- attention ------------------------------------------------------------------------------------
@torch.inference_mode()
def attention_heads(model: Seq2Seq, src_ids: Sequence[int], tgt_ids: Sequence[int],
                    device: torch.device | str = "cpu") -> Tensor | None:
    """The cross-attention of the translation tgt_ids (target ids without bos/eos) of src_ids,
    teacher-forced: [layers, heads, target pieces + eos, source pieces + eos] (float32, CPU). A
    Transformer gives every decoder layer and head (`cross_attention_heads`); a model with one
    attention (an RNN, an ensemble's mean) gives it as [1, 1, T, S]; None for a model without
    attention."""
    src, src_lengths = source_tensor([list(src_ids)])
    src, src_lengths = src.to(device), src_lengths.to(device)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]], dtype=torch.long, device=device)
    per_head = getattr(model, "cross_attention_heads", None)
    if per_head is not None:
        return per_head(src, src_lengths, tgt_in)[0].float().cpu()
    one = model.teacher_forced_attention(src, src_lengths, tgt_in)
    return None if one is None else one[0].float().cpu()[None, None]


def attention_dict(weights: Tensor, src_pieces: list[str], tgt_pieces: list[str], digits: int = 4) -> dict[str, Any]:
    """JSON-ready attention: the pieces (with </s>) and weights [layer][head][target][source], rounded."""
    if weights.shape[-2:] != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(f"attention {tuple(weights.shape)} for {len(tgt_pieces)} x {len(src_pieces)} pieces")
    return {"source": src_pieces, "target": tgt_pieces, "layers": weights.size(0), "heads": weights.size(1),
            "weights": weights.mul(10**digits).round().div(10**digits).tolist()}

