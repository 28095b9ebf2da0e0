"""Forced scoring (mt/decode/scorer.py): the score of a search's hypothesis is the log-probability the search
reported for it; a batch scores like each pair alone; an empty target scores the eos."""

from __future__ import annotations

import pytest
import torch

from mt import MTError
from mt.decode.ensemble import EnsembleModel
from mt.data.vocab import BOS_ID, EOS_ID
from mt.decode.scorer import Scorer
from mt.decode.search import BeamSearch, LengthPenalty, SamplingSearch
from test_search import LENGTHS, MODELS, random_batch, random_model

PEN = LengthPenalty("gnmt", 0.6)


def scorer(model) -> Scorer:
    return Scorer(model, None, None, PEN, batch_tokens=12)  # a small budget: several batches


def rows(src: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [src[i, : int(n) - 1].tolist() for i, n in enumerate(lengths)]  # without the source's eos


@pytest.mark.parametrize("name", [*MODELS, "ensemble"])
def test_score_of_the_beams_hypotheses_is_their_reported_log_prob(name: str) -> None:
    model = EnsembleModel([random_model("transformer"), random_model("bahdanau-gru")]) if name == "ensemble" \
        else random_model(name)
    src, lengths = random_batch(LENGTHS)
    lengths = lengths + 1  # random_batch's sentences get an eos here, as the translator's do
    src = torch.cat([src, torch.zeros_like(src[:, :1])], dim=1)
    for i, n in enumerate(lengths.tolist()):
        src[i, n - 1] = EOS_ID
    for search in (BeamSearch(4, PEN, max_len_a=1.0, max_len_b=3, n_best=4),
                   SamplingSearch(seed=3, n_best=3, max_len_a=1.0, max_len_b=3)):
        hyps = search(model, src, lengths)
        srcs = [s for s, h in zip(rows(src, lengths), hyps) for _ in h]
        tgts = [x.tokens for h in hyps for x in h]
        scored = scorer(model).score_ids(srcs, tgts)
        for s, h in zip(scored, [x for h in hyps for x in h]):
            assert s.tokens == h.tokens and len(s.token_log_probs) == len(h.tokens) + 1
            assert s.log_prob == pytest.approx(h.log_prob, abs=1e-4)
            assert s.log_prob == pytest.approx(sum(s.token_log_probs), abs=1e-5)
            assert s.score == pytest.approx(s.log_prob / float(PEN(len(h.tokens) + 1.0)), abs=1e-6)
            if isinstance(search, BeamSearch):
                assert s.score == pytest.approx(h.score, abs=1e-4)


@pytest.mark.parametrize("name", ["transformer", "luong_general-lstm"])
def test_a_batch_scores_like_each_pair_alone(name: str) -> None:
    model = random_model(name)
    g = torch.Generator().manual_seed(4)
    srcs = [torch.randint(4, 13, (n,), generator=g).tolist() for n in (5, 1, 8, 3, 0)]
    tgts = [torch.randint(4, 11, (n,), generator=g).tolist() for n in (2, 6, 0, 4, 3)]
    together = scorer(model).score_ids(srcs, tgts)
    for s, t, x in zip(srcs, tgts, together):
        alone = Scorer(model, None, None, PEN).score_ids([s], [t])[0]
        assert x.token_log_probs == pytest.approx(alone.token_log_probs, abs=1e-5)
        assert x.tokens == t


@pytest.mark.parametrize("name", ["transformer", "bahdanau-gru"])
def test_an_empty_target_scores_the_eos(name: str) -> None:
    model = random_model(name)
    src = [6, 7, 8]
    s = scorer(model).score_ids([src], [[]])[0]
    with torch.no_grad():
        state = model.init_state(model.encode(torch.tensor([src + [EOS_ID]]), torch.tensor([4])), 2)
        lp, _ = model.decode_step(torch.tensor([BOS_ID]), state)
    assert s.tokens == [] and s.token_log_probs == pytest.approx([float(lp[0, EOS_ID])], abs=1e-5)
    assert s.score == pytest.approx(s.log_prob / float(PEN(1.0)))


def test_a_pair_longer_than_the_model_allows_is_marked_and_the_others_are_scored() -> None:
    """Corpus filtering goes on past an over-long pair: it gets -inf and the reason, in its place."""
    model = random_model("transformer")  # 64 positions
    src, tgt = [[4], [5], [4] * 64, [6, 7]], [[4], [4] * 64, [5], [8]]
    out = scorer(model).score_ids(src, tgt)
    assert len(out) == 4
    assert out[1].error == "the target has 64 subword tokens, more than the model's 63"
    assert out[2].error == "the source has 64 subword tokens, more than the model's 63"
    for bad in (out[1], out[2]):
        assert bad.log_prob == bad.score == float("-inf") and bad.token_log_probs == []
    alone = scorer(model).score_ids([src[0], src[3]], [tgt[0], tgt[3]])
    for got, want in zip((out[0], out[3]), alone):
        # float32 log-probabilities of -11 and -19 (an ulp is 1e-6 to 2e-6): a few ulps, should the
        # over-long pairs change how the others are batched
        assert got.error is None and got.log_prob == pytest.approx(want.log_prob, abs=1e-5)


def test_a_model_without_attention_has_none_to_align() -> None:
    plain, attentive = random_model("none-gru"), random_model("transformer")
    src, lengths = random_batch(LENGTHS)
    tgt_in = torch.cat([torch.full((len(LENGTHS), 1), BOS_ID), torch.full((len(LENGTHS), 3), 5)], dim=1)
    with torch.no_grad():
        assert not plain.has_attention and plain.teacher_forced_attention(src, lengths, tgt_in) is None
        assert EnsembleModel([plain, plain]).teacher_forced_attention(src, lengths, tgt_in) is None
        mixed = EnsembleModel([plain, attentive]).teacher_forced_attention(src, lengths, tgt_in)
        torch.testing.assert_close(mixed, attentive.teacher_forced_attention(src, lengths, tgt_in).float())
    with pytest.raises(MTError, match="no attention"):
        Scorer(plain, None, None, PEN, return_attention=True)
    assert Scorer(EnsembleModel([plain, attentive]), None, None, PEN, return_attention=True).return_attention
