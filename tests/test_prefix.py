"""Target prefixes and token scores in the searches (mt/decode/search.py): every output starts with its
prefix, an empty prefix changes nothing, beam search with a prefix is the brute-force best among the
hypotheses that start with it, and a prefix at or over the length limit is returned as it is."""

from __future__ import annotations

import pytest
import torch

from mt import MTError
from mt.decode.ensemble import EnsembleModel
from mt.data.vocab import BOS_ID, EOS_ID
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty, SamplingSearch
from test_search import (
    LENGTHS,
    SOURCES,
    Scripted,
    batch,
    brute_force,
    max_length,
    random_batch,
    random_model,
    random_table,
)

PREFIXES = [[5, 6], [], [7], [4, 4, 9], []]  # one per sentence of LENGTHS (tiny target vocabulary 11)


def all_searches(attention: bool = False):
    common = dict(max_len_a=1.0, max_len_b=3, return_attention=attention)
    return [GreedySearch(**common), BeamSearch(4, LengthPenalty("gnmt", 0.6), n_best=3, **common),
            SamplingSearch(topk=4, seed=2, n_best=2, **common)]


def models():
    return {"transformer": random_model("transformer"), "luong-lstm": random_model("luong_general-lstm"),
            "ensemble": EnsembleModel([random_model("transformer"), random_model("bahdanau-gru")]).eval()}


@pytest.mark.parametrize("name", ["transformer", "luong-lstm", "ensemble"])
def test_outputs_start_with_their_prefix_and_score_it(name: str) -> None:
    model = models()[name]
    src, lengths = random_batch(LENGTHS)
    for search in all_searches():
        out = search(model, src, lengths, PREFIXES)
        for i, (hyps, prefix) in enumerate(zip(out, PREFIXES)):
            assert hyps
            for h in hyps:
                assert h.tokens[: len(prefix)] == prefix
                # token scores: the model's own log-probabilities of tokens + eos, prefix included
                tgt_in = torch.tensor([[BOS_ID] + h.tokens])
                with torch.no_grad():
                    lp = model(src[i : i + 1, : LENGTHS[i]], lengths[i : i + 1], tgt_in).float().log_softmax(-1)[0]
                gold = lp.gather(1, torch.tensor(h.tokens + [EOS_ID])[:, None])[:, 0]
                assert h.token_scores == pytest.approx(gold.tolist(), abs=1e-4)
                assert h.log_prob == pytest.approx(sum(h.token_scores), abs=1e-4)


@pytest.mark.parametrize("name", ["transformer", "ensemble"])
def test_an_empty_prefix_gives_the_ordinary_output(name: str) -> None:
    model = models()[name]
    src, lengths = random_batch(LENGTHS)
    for search in all_searches(attention=True):
        plain = search(model, src, lengths)
        # sampling draws from one generator for the whole batch: only a batch of the same rows samples alike
        for prefixes in ([[]] * len(LENGTHS),) + (() if isinstance(search, SamplingSearch) else (PREFIXES,)):
            out = search(model, src, lengths, prefixes)
            for i, prefix in enumerate(prefixes):
                if prefix:
                    continue
                # the same search over the same rows: the same tokens; scores equal up to float32 summation order
                assert [h.tokens for h in out[i]] == [h.tokens for h in plain[i]]
                assert [h.score for h in out[i]] == pytest.approx([h.score for h in plain[i]], rel=1e-5, abs=1e-5)
                for a, b in zip(out[i], plain[i]):
                    torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


def test_beam_with_a_prefix_is_the_brute_force_best_among_hypotheses_that_start_with_it() -> None:
    model = Scripted(random_table(seed=5, scale=2.0), vocab=7)
    pen = LengthPenalty("gnmt", 1.0)
    src, lengths = batch(SOURCES)
    prefixes = [[6], [5, 4], [], [4, 4, 4]]  # the last as long as that sentence's limit (0.6 * 5 = 3)
    out = BeamSearch(90, pen, early_stop=False, max_len_a=0.6, max_len_b=1, n_best=5)(model, src, lengths, prefixes)
    for sent, prefix, hyps in zip(SOURCES, prefixes, out):
        limit = max(max_length(len(sent), 0.6, 1, 0), len(prefix))
        expected = [e for e in brute_force(model, tuple(sent), limit, 0, pen) if e[1][: len(prefix)] == prefix]
        assert [h.tokens for h in hyps] == [e[1] for e in expected[:5]]
        assert [h.score for h in hyps] == pytest.approx([e[0] for e in expected[:5]], abs=1e-5)


def test_a_prefix_over_the_length_limit_is_returned_as_it_is() -> None:
    model = random_model("transformer")
    src, lengths = random_batch([2, 3])
    long = [4, 5, 6, 7, 8, 9, 10, 4, 5, 6]  # limits: 1.0 * 2 + 1 = 3 and 4 tokens
    for search in all_searches():
        search.max_len_a, search.max_len_b = 1.0, 1
        out = search(model, src, lengths, [long, long[:4]])
        assert {tuple(h.tokens) for h in out[0]} == {tuple(long)}  # the prefix, then eos
        assert {tuple(h.tokens) for h in out[1]} == {tuple(long[:4])}
        assert all(len(h.token_scores) == len(h.tokens) + 1 for hyps in out for h in hyps)
    # a prefix the model cannot represent (64 positions) is an error, not a silent cut
    with pytest.raises(MTError, match="target prefix of 70 tokens is longer than the model's 63"):
        GreedySearch()(model, src, lengths, [[4] * 70, []])


def test_min_len_counts_the_prefix() -> None:
    """min_len is about the whole output: with a prefix of 2 and min_len 3 one more token is needed."""
    model = Scripted(random_table(seed=9), vocab=7)
    src, lengths = batch([[4, 5]])
    out = BeamSearch(6, LengthPenalty("none"), max_len_a=0.0, max_len_b=5, min_len=3, n_best=6)(
        model, src, lengths, [[5, 6]])
    assert all(len(h.tokens) >= 3 and h.tokens[:2] == [5, 6] for h in out[0])
