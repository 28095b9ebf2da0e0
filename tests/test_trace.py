"""The beam search's trace (mt/decode/trace.py): recorded by the search itself, its best finished path
is the search's output with the same score (bit for bit) on every model family and an ensemble, its
n-best ends are the search's n-best list, every step keeps at most `beam` open hypotheses chosen
from its candidates, recording changes nothing, and the per-head attention averages to the layer
attention the model returns."""

from __future__ import annotations

import pytest
import torch

from mt.data.vocab import BOS_ID, EOS_ID
from mt.decode.ensemble import EnsembleModel
from mt.decode.search import BeamSearch, LengthPenalty
from mt.decode.trace import SearchTrace, SearchTree, attention_dict, attention_heads
from test_search import ATTENTION_MODELS, MODELS, random_batch, random_model

LENGTHS = [5, 2, 7, 3, 1, 4]


def model_named(name: str):
    if name == "ensemble":
        return EnsembleModel([random_model("transformer"), random_model("bahdanau-gru")]).eval()
    return random_model(name)


def traced_search(beam: int, kind: str = "gnmt", alpha: float = 0.6, early_stop: bool = True,
                  n_best: int = 1) -> BeamSearch:
    return BeamSearch(beam, LengthPenalty(kind, alpha), early_stop=early_stop, max_len_a=1.0, max_len_b=4,
                      n_best=n_best)


def path_tokens_and_log_prob(tree: SearchTree, path: list[int]) -> tuple[list[int], float]:
    cands = [tree.steps[s][c] for s, c in enumerate(path)]
    return [x.token for x in cands][:-1], cands[-1].score


@pytest.mark.parametrize("name", [*MODELS, "ensemble"])
@pytest.mark.parametrize("beam,kind,alpha,early_stop", [(4, "gnmt", 0.6, True), (3, "d2l", 1.0, False),
                                                        (1, "none", 0.0, True), (6, "gnmt", 2.0, True)])
def test_best_path_is_the_search_output_exactly(name: str, beam: int, kind: str, alpha: float,
                                                early_stop: bool) -> None:
    model = model_named(name)
    src, lengths = random_batch(LENGTHS, seed=3)
    search = traced_search(beam, kind, alpha, early_stop, n_best=beam)
    plain = search(model, src, lengths)
    search.trace = trace = SearchTrace()
    hyps = search(model, src, lengths)
    assert len(trace.trees) == len(LENGTHS)
    for sent, (tree, h, p) in enumerate(zip(trace.trees, hyps, plain)):
        # recording changes nothing
        assert [(x.tokens, x.score) for x in h] == [(x.tokens, x.score) for x in p]
        tokens, log_prob = path_tokens_and_log_prob(tree, tree.best_path())
        assert tokens == h[0].tokens, sent
        assert log_prob == h[0].log_prob  # the same float: the search's own record
        assert tree.to_dict(lambda ids: [str(i) for i in ids])["score"] == h[0].score
        # the n-best list: the best finished hypotheses, best first, as the search ranks them
        ranked = tree.ranked()
        assert len(ranked) >= len(h) == beam
        for (s, c), x in zip(ranked, h):
            assert tree.steps[s][c].final == x.score
            assert path_tokens_and_log_prob(tree, tree.path(s, c))[0] == x.tokens


@pytest.mark.parametrize("name", ["transformer", "luong_general-lstm"])
def test_each_step_keeps_beam_hypotheses_chosen_from_its_candidates(name: str) -> None:
    beam = 3
    src, lengths = random_batch([6, 4], seed=5)
    search = traced_search(beam, n_best=beam)
    search.trace = trace = SearchTrace()
    search(random_model(name), src, lengths)
    for tree in trace.trees:
        assert tree.beam == beam and tree.length_penalty == ("gnmt", 0.6)
        assert len(tree.steps[0]) <= 2 * beam and {x.parent for x in tree.steps[0]} == {0}  # one start row
        for s, cands in enumerate(tree.steps):
            kept = sorted(x.kept for x in cands if x.kept is not None)
            assert kept == list(range(len(kept))) and len(kept) <= beam
            scores = [x.score for x in cands]
            assert scores == sorted(scores, reverse=True)  # best first, as the search ranks them
            kept_rows = len([x for x in tree.steps[s - 1] if x.kept is not None]) if s else 1
            for x in cands:
                assert 0 <= x.parent < kept_rows
                parent_score = next(y.score for y in tree.steps[s - 1] if y.kept == x.parent) if s else 0.0
                assert x.score == pytest.approx(parent_score + x.log_prob, abs=1e-5)
                assert x.kept is None or x.final is None  # a kept hypothesis is open
            # the kept ones are the best candidates that do not end (eos)
            open_ = [x for x in cands if x.token != EOS_ID]
            assert [x.kept for x in open_[: len(kept)]] == kept


def test_a_batch_traces_each_sentence_and_a_new_call_starts_afresh() -> None:
    model = random_model("transformer")
    search = traced_search(4)
    search.trace = trace = SearchTrace()
    src, lengths = random_batch([3, 5, 2], seed=1)
    batched = search(model, src, lengths)
    trees = trace.trees
    for i in range(3):
        alone = search(model, src[i: i + 1, : int(lengths[i])], lengths[i: i + 1])
        assert len(trace.trees) == 1
        assert trace.trees[0].tokens(trace.trees[0].best_path()) == alone[0][0].tokens == batched[i][0].tokens
        assert len(trace.trees[0].steps) == len(trees[i].steps)


def test_the_dict_names_pieces_and_marks_the_best_path() -> None:
    search = traced_search(2, n_best=2)
    search.trace = trace = SearchTrace()
    src, lengths = random_batch([4], seed=2)
    hyps = search(random_model("transformer"), src, lengths)
    d = trace.trees[0].to_dict(lambda ids: [f"p{i}" for i in ids], n_best=2)
    assert d["beam"] == 2 and d["length_penalty"] == {"kind": "gnmt", "alpha": 0.6}
    assert len(d["best"]) == len(hyps[0][0].tokens) + 1 <= len(d["steps"])
    best = [d["steps"][s][c] for s, c in enumerate(d["best"])]
    assert [x["token"] for x in best[:-1]] == hyps[0][0].tokens and best[-1]["finished"]
    assert all(x["piece"] == f"p{x['token']}" for step in d["steps"] for x in step)
    assert d["score"] == hyps[0][0].score and len(d["nbest"]) == 2
    assert d["steps"][d["nbest"][1][0]][d["nbest"][1][1]]["final_score"] == hyps[0][1].score


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_attention_heads_average_to_the_layer_attention(name: str) -> None:
    model = random_model(name)
    src_ids, tgt_ids = [5, 9, 7, 4], [6, 8, 5]
    heads = attention_heads(model, src_ids, tgt_ids)
    src, lengths = torch.tensor([[*src_ids, EOS_ID]]), torch.tensor([len(src_ids) + 1])
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])
    assert heads.shape[-2:] == (len(tgt_ids) + 1, len(src_ids) + 1)
    assert torch.allclose(heads.sum(-1), torch.ones(heads.shape[:-1]), atol=1e-5)
    layers = MODELS[name].dec_layers if name == "transformer" else 1
    assert heads.shape[:2] == ((layers, MODELS[name].heads) if name == "transformer" else (1, 1))
    for layer in range(layers):
        with model.attention_layer_set(layer), torch.inference_mode():
            expected = model.teacher_forced_attention(src, lengths, tgt_in)[0]
        assert torch.allclose(heads[layer].mean(0), expected, atol=1e-5)
    d = attention_dict(heads, [f"s{i}" for i in range(len(src_ids) + 1)], [f"t{i}" for i in range(len(tgt_ids) + 1)])
    assert (d["layers"], d["heads"]) == tuple(heads.shape[:2])
    assert d["weights"][0][0][0] == pytest.approx(heads[0, 0, 0].tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="pieces"):
        attention_dict(heads, ["a"], ["b"])


def test_a_caller_that_reorders_the_n_best_list_names_what_it_returned() -> None:
    """With constraints the search returns the hypotheses that meet them first: the tree's returned
    path is then the one with the returned tokens, not merely the best score."""
    model = random_model("transformer")
    src, lengths = random_batch([5], seed=4)
    search = traced_search(4, n_best=4)
    search.trace = trace = SearchTrace()
    plain = search(model, src, lengths)[0]
    tree = trace.trees[0]
    second = tree.ranked()[1]
    assert tree.best_path(tree.tokens(tree.path(*second))) == tree.path(*second)
    assert tree.best_path() == tree.best_path(plain[0].tokens) and tree.best_path([10**6]) == []
    phrase = [plain[1].tokens[-1]] if plain[1].tokens else [5]
    hyps = search(model, src, lengths, constraints=[[phrase]])[0]
    d = trace.trees[0].to_dict(lambda ids: [str(i) for i in ids], returned=hyps[0].tokens)
    assert [d["steps"][s][c]["token"] for s, c in enumerate(d["best"])][:-1] == hyps[0].tokens
    assert d["score"] == hyps[0].score
