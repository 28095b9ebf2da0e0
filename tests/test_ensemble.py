"""Ensembles (mt/decode/ensemble.py): one member is the member, two members are their mixture (brute force
on a scripted model), mixed architectures decode like their teacher-forced mixture, and runs with
other vocabularies are refused."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mt import MTError
from mt.config import VocabConfig
from mt.decode.ensemble import EnsembleModel, check_compatible
from mt.data.vocab import BOS_ID, EOS_ID
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty, SamplingSearch
from mt.data.synthetic import generate
from mt.data.vocab import train_vocab
from test_search import (
    LENGTHS,
    MODELS,
    SOURCES,
    Scripted,
    batch,
    brute_force,
    max_length,
    random_batch,
    random_model,
    random_table,
    assert_same,
)


def mixture_table(*tables):
    """log of the mean probability of several scripted tables."""

    def table(src: tuple, prefix: tuple) -> torch.Tensor:
        lps = torch.stack([t(src, prefix).double() for t in tables])
        return (torch.logsumexp(lps, 0) - math.log(len(tables))).float()

    return table


def searches(attention: bool = False):
    return [
        GreedySearch(max_len_a=1.0, max_len_b=3, return_attention=attention),
        BeamSearch(4, LengthPenalty("gnmt", 0.6), max_len_a=1.0, max_len_b=3, n_best=4, return_attention=attention),
        SamplingSearch(topk=3, seed=5, n_best=2, max_len_a=1.0, max_len_b=3),
    ]


@pytest.mark.parametrize("name", ["transformer", "bahdanau-gru", "luong_general-lstm"])
def test_an_ensemble_of_one_is_the_model(name: str) -> None:
    model = random_model(name)
    ensemble = EnsembleModel([model]).eval()
    src, lengths = random_batch(LENGTHS)
    for search in searches(attention=True):
        alone, ens = search(model, src, lengths), search(ensemble, src, lengths)
        for a, e in zip(alone, ens):
            assert [(h.tokens, h.score, h.log_prob) for h in a] == [(h.tokens, h.score, h.log_prob) for h in e]
            for ha, he in zip(a, e):
                if ha.attention is not None:
                    assert torch.equal(ha.attention, he.attention)


@pytest.mark.parametrize("kind,alpha", [("none", 1.0), ("gnmt", 0.6)])
def test_two_model_beam_equals_brute_force_over_the_mixture(kind: str, alpha: float) -> None:
    a, b = random_table(seed=3, scale=2.0), random_table(seed=11, scale=2.0)
    ensemble = EnsembleModel([Scripted(a, vocab=7), Scripted(b, vocab=7)])
    mixture = Scripted(mixture_table(a, b), vocab=7)
    pen = LengthPenalty(kind, alpha)
    src, lengths = batch(SOURCES)
    out = BeamSearch(90, pen, early_stop=False, max_len_a=0.5, max_len_b=1, n_best=8)(ensemble, src, lengths)
    for sent, hyps in zip(SOURCES, out):
        expected = brute_force(mixture, tuple(sent), max_length(len(sent), 0.5, 1, 0), 0, pen)
        assert_same(hyps, expected[:8])
    # and the mixture is not just one of the members: their own best lists differ from it
    alone = BeamSearch(90, pen, early_stop=False, max_len_a=0.5, max_len_b=1, n_best=8)(Scripted(a, 7), src, lengths)
    assert any([h.tokens for h in x] != [h.tokens for h in y] for x, y in zip(alone, out))


def test_mixed_architectures_decode_their_teacher_forced_mixture() -> None:
    """A Transformer, a GRU with Bahdanau attention and an LSTM without attention: every search's
    hypotheses carry the mixture's log-probability (from the teacher-forced pass), the attention is the
    mean of the members that have one, and a sentence decodes the same alone as in the batch."""
    members = [random_model("transformer"), random_model("bahdanau-gru"), random_model("none-gru")]
    ensemble = EnsembleModel(members).eval()
    assert ensemble.max_tgt_positions == members[0].max_tgt_positions  # the smallest limit (RNNs have none)
    src, lengths = random_batch(LENGTHS)
    for search in searches(attention=True)[:2]:
        out = search(ensemble, src, lengths)
        for i, (hyps, n) in enumerate(zip(out, LENGTHS)):
            alone = search(ensemble, src[i : i + 1, :n], lengths[i : i + 1])[0]
            assert [h.tokens for h in hyps] == [h.tokens for h in alone]
            for h in hyps:
                tgt_in = torch.tensor([[BOS_ID] + h.tokens])
                with torch.no_grad():
                    lp = ensemble(src[i : i + 1, :n], lengths[i : i + 1], tgt_in)[0]
                    gold = float(lp.gather(1, torch.tensor(h.tokens + [EOS_ID])[:, None]).sum())
                    attn = torch.stack([m.teacher_forced_attention(src[i : i + 1, :n], lengths[i : i + 1], tgt_in)[0]
                                        for m in members[:2]]).mean(0)
                assert h.log_prob == pytest.approx(gold, abs=1e-4)
                torch.testing.assert_close(h.attention, attn, atol=1e-5, rtol=0)
    # the ensemble's distribution is the members' mean probability
    with torch.no_grad():
        tgt_in = torch.full((len(LENGTHS), 2), BOS_ID)
        probs = torch.stack([m(src, lengths, tgt_in).log_softmax(-1).exp() for m in members]).mean(0)
        torch.testing.assert_close(ensemble(src, lengths, tgt_in).exp(), probs, atol=1e-6, rtol=1e-5)


def test_members_with_other_vocabularies_are_refused(tmp_path: Path) -> None:
    lines = [s for pair in generate(200, seed=1) for s in pair]
    v1 = train_vocab(lines, tmp_path / "a" / "spm.model", VocabConfig(size=300, byte_fallback=False))
    v1_again = train_vocab(lines, tmp_path / "b" / "spm.model", VocabConfig(size=300, byte_fallback=False))
    v2 = train_vocab(lines, tmp_path / "c" / "spm.model", VocabConfig(size=250, byte_fallback=False))
    run = lambda src, tgt: SimpleNamespace(src_vocab=src, tgt_vocab=tgt)  # noqa: E731
    check_compatible([("runs/a", run(v1, v1)), ("runs/b", run(v1_again, v1_again))])  # trained alike: fine
    with pytest.raises(MTError, match=r"cannot ensemble runs/a and runs/c: their target vocabulary differs"):
        check_compatible([("runs/a", run(v1, v1)), ("runs/b", run(v1, v1)), ("runs/c", run(v2, v2))])
    with pytest.raises(MTError, match=r"cannot ensemble runs/a and runs/d: their source segmentation"):
        check_compatible([("runs/a", run(v1, v1)), ("runs/d", run(v2, v1))])
    # models whose output layers differ in size cannot be mixed either
    with pytest.raises(MTError, match="different target vocabulary sizes"):
        small = Scripted(random_table(1, vocab=7), vocab=7)
        large = Scripted(random_table(1, vocab=9), vocab=9)
        GreedySearch(max_len_b=2)(EnsembleModel([small, large]), *batch([[4, 5]]))


def test_weights_mix_the_members_in_proportion() -> None:
    """Weights (1, 3): beam search equals brute force over 0.25 p_a + 0.75 p_b; weights (1, 0): member a."""
    a, b = random_table(seed=3, scale=2.0), random_table(seed=11, scale=2.0)

    def weighted(src: tuple, prefix: tuple) -> torch.Tensor:
        lps = torch.stack([a(src, prefix).double() + math.log(0.25), b(src, prefix).double() + math.log(0.75)])
        return torch.logsumexp(lps, 0).float()

    pen = LengthPenalty("gnmt", 0.6)
    src, lengths = batch(SOURCES)
    search = BeamSearch(90, pen, early_stop=False, max_len_a=0.5, max_len_b=1, n_best=8)
    out = search(EnsembleModel([Scripted(a, vocab=7), Scripted(b, vocab=7)], weights=[1, 3]), src, lengths)
    for sent, hyps in zip(SOURCES, out):
        assert_same(hyps, brute_force(Scripted(weighted, 7), tuple(sent), max_length(len(sent), 0.5, 1, 0), 0, pen)[:8])
    only_a = search(EnsembleModel([Scripted(a, 7), Scripted(b, 7)], weights=[2, 0]), src, lengths)
    alone = search(Scripted(a, 7), src, lengths)
    assert [[(h.tokens, h.score) for h in x] for x in only_a] == [[(h.tokens, h.score) for h in x] for x in alone]
    for bad in ([1], [1, -1], [0, 0]):
        with pytest.raises(MTError, match="ensemble weights"):
            EnsembleModel([Scripted(a, 7), Scripted(b, 7)], weights=bad)
