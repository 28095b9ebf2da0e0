"""Decoding under control (mt/decode/rules.py, mt/decode/constraints.py): no repeated n-grams, the
repetition penalty, the loop guard, avoid lists and lexically constrained beam search (DBA).

Exactness on the scripted model: with a beam large enough to keep every hypothesis, each rule's
search returns the brute-force best among the sequences the rule allows (scored as the rule scores
them), and the constrained beam the best among the sequences containing every phrase. On tiny
random models of every family and on an ensemble: the properties hold in greedy, beam and sampling,
and a sentence decodes the same alone as in a batch."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from mt import MTError
from mt.config import DecodeConfig
from mt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from mt.decode.constraints import constraint_marks, contains
from mt.decode.ensemble import EnsembleModel
from mt.decode.rules import repeats
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty, SamplingSearch, build_search
from test_search import MODELS, PENALTIES, Scripted, assert_same, batch, random_batch, random_model, random_table

SOURCES = [[4, 5, 6, 4], [5], [6, 4]]
MAX_LEN = 4  # a = 0, b = 4: every hypothesis has at most 4 tokens; 4 generable tokens: 4 + ... + 256 < 400
BIG_BEAM = 400


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def longest_run(tokens: list[int]) -> int:
    """The most times a unit of 1 to 4 tokens stands in a row in tokens."""
    best = 1 if tokens else 0
    for u in range(1, 5):
        for start in range(len(tokens)):
            times = 1
            while tokens[start + times * u: start + (times + 1) * u] == tokens[start: start + u] \
                    and start + (times + 1) * u <= len(tokens):
                times += 1
            best = max(best, times)
    return best


def penalised(table, penalty: float):
    """table with CTRL's penalty on the tokens of the prefix, renormalised (RepetitionPenalty)."""
    def step(src: tuple, prefix: tuple) -> torch.Tensor:
        lp = table(src, prefix).double().clone()
        lp[PAD_ID] = lp[BOS_ID] = float("-inf")
        for t in set(prefix):
            lp[t] = lp[t] * penalty
        return lp.log_softmax(-1)
    return step


def brute(model: Scripted, src: tuple, pen: LengthPenalty, allowed=lambda toks: True, step=None):
    """Every sequence of at most MAX_LEN generable tokens that `allowed` accepts, scored with the
    per-step log-probabilities `step(src, prefix)` (default: the model's, pad and bos masked)."""
    step = step or model.table
    alphabet = [t for t in range(model.vocab) if t not in (PAD_ID, BOS_ID, EOS_ID)]
    out = []
    for n in range(MAX_LEN + 1):
        for toks in itertools.product(alphabet, repeat=n):
            if allowed(list(toks)):
                seq = toks + (EOS_ID,)
                lp = sum(float(step(src, seq[:i])[t]) for i, t in enumerate(seq))
                out.append((lp / float(pen(float(n + 1))), list(toks)))
    return sorted(out, key=lambda x: -x[0])


def exact_beam(pen: LengthPenalty, **kwargs) -> BeamSearch:
    return BeamSearch(BIG_BEAM, pen, early_stop=False, max_len_a=0.0, max_len_b=MAX_LEN, n_best=3, **kwargs)


# ----------------------------------------------------------------------------------------------
# 1. brute force on the scripted model


@pytest.mark.parametrize("kind,alpha", PENALTIES[:2])
@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram_equals_brute_force(kind: str, alpha: float, n: int) -> None:
    model, pen = Scripted(random_table(seed=3, scale=2.5), vocab=7), LengthPenalty(kind, alpha)
    out = exact_beam(pen, no_repeat_ngram=n)(model, *batch(SOURCES))
    for sent, hyps in zip(SOURCES, out):
        assert_same(hyps, brute(model, tuple(sent), pen, lambda t: not has_repeated_ngram(t, n))[:3])


@pytest.mark.parametrize("penalty", [1.5, 3.0, 0.7])
def test_repetition_penalty_equals_brute_force(penalty: float) -> None:
    model, pen = Scripted(random_table(seed=5, scale=2.0), vocab=7), LengthPenalty("gnmt", 0.6)
    out = exact_beam(pen, repetition_penalty=penalty)(model, *batch(SOURCES))
    for sent, hyps in zip(SOURCES, out):
        assert_same(hyps, brute(model, tuple(sent), pen, step=penalised(model.table, penalty))[:3])
    greedy = GreedySearch(max_len_a=0.0, max_len_b=MAX_LEN, repetition_penalty=penalty)(model, *batch(SOURCES))
    for sent, hyps in zip(SOURCES, greedy):  # greedy: each step the argmax of the penalised distribution
        prefix: tuple = ()
        while len(prefix) < MAX_LEN:
            tok = int(penalised(model.table, penalty)(tuple(sent), prefix).argmax())
            if tok == EOS_ID:
                break
            prefix += (tok,)
        assert hyps[0].tokens == list(prefix)


AVOID = [[[4]], [[5, 6], [6, 6]], [[1, 4, 5]]]


def test_avoid_equals_brute_force() -> None:
    model, pen = Scripted(random_table(seed=11, scale=2.0), vocab=7), LengthPenalty("gnmt", 0.6)
    out = exact_beam(pen)(model, *batch(SOURCES), avoid=AVOID)
    for sent, phrases, hyps in zip(SOURCES, AVOID, out):
        expected = brute(model, tuple(sent), pen, lambda t: not any(contains(t, p) for p in phrases))
        assert_same(hyps, expected[:3])


CONSTRAINTS = [[[5, 6]], [[4], [6]], [], [[6, 6]], [[1, 5, 4]], [[4, 5], [5, 4]]]


@pytest.mark.parametrize("kind,alpha", PENALTIES)
@pytest.mark.parametrize("seed", [1, 2])
def test_constrained_beam_equals_brute_force(kind: str, alpha: float, seed: int) -> None:
    """The best hypotheses are the brute-force best among the sequences holding every phrase (each
    sentence of the batch has its own, one none), whatever the beam keeps on the way."""
    model, pen = Scripted(random_table(seed=seed, scale=2.0), vocab=7), LengthPenalty(kind, alpha)
    sources = [SOURCES[i % 3] for i in range(len(CONSTRAINTS))]
    out = exact_beam(pen)(model, *batch(sources), constraints=CONSTRAINTS)
    for sent, phrases, hyps in zip(sources, CONSTRAINTS, out):
        expected = brute(model, tuple(sent), pen, lambda t: all(contains(t, p) for p in phrases))
        assert_same(hyps, expected[:3])


def test_constrained_small_beam_meets_constraints_and_unconstrained_sentences_are_untouched() -> None:
    model = Scripted(random_table(seed=4, scale=2.0), vocab=7)
    src, lengths = batch([SOURCES[i % 3] for i in range(len(CONSTRAINTS))])
    for k in (2, 3, 5):
        search = BeamSearch(k, LengthPenalty("gnmt", 0.6), max_len_a=0.0, max_len_b=MAX_LEN, n_best=2)
        out = search(model, src, lengths, constraints=CONSTRAINTS)
        plain = search(model, src, lengths)
        for phrases, hyps, ref in zip(CONSTRAINTS, out, plain):
            assert all(contains(hyps[0].tokens, p) for p in phrases)
            if not phrases:
                assert [h.tokens for h in hyps] == [h.tokens for h in ref]


def test_constraint_longer_than_the_limit_still_translates() -> None:
    model = Scripted(random_table(seed=4), vocab=7)
    src, lengths = batch([[4, 5], [5]])
    search = BeamSearch(3, max_len_a=0.0, max_len_b=3)
    out = search(model, src, lengths, constraints=[[[4, 5, 6, 4]], [[6]]])
    plain = search(model, src, lengths)
    assert out[0][0].tokens == plain[0][0].tokens  # does not fit: searched without it
    assert 6 in out[1][0].tokens


def test_constraints_need_beam_search() -> None:
    model = Scripted(random_table(seed=4), vocab=7)
    with pytest.raises(MTError, match="need beam search"):
        GreedySearch()(model, *batch([[4]]), constraints=[[[5]]])


def test_constraint_marks() -> None:
    assert constraint_marks([4, 5, 6, 5, 6], [[5, 6], [4]]) == [True, True, True, False, False]
    assert constraint_marks([4, 4, 4, 5], [[4, 4, 5]]) == [False, True, True, True]
    assert contains([4, 4, 4, 5], [4, 4, 5]) and not contains([4, 5], [5, 4])


# ----------------------------------------------------------------------------------------------
# 2. the loop guard on a scripted model that loops


def looping_table(unit: tuple[int, ...]):
    """After any prefix, the next token of an endless repetition of `unit` has probability 0.9."""
    def table(src: tuple, prefix: tuple) -> torch.Tensor:
        p = torch.full((7,), 0.02, dtype=torch.float64)
        p[unit[len(prefix) % len(unit)]] = 0.9
        return (p / p.sum()).log().float()
    return table


def guarded_searches(max_repeat: int):
    common = dict(max_len_a=0.0, max_len_b=18, max_repeat=max_repeat)
    return [GreedySearch(**common), BeamSearch(4, LengthPenalty("gnmt", 0.6), n_best=2, **common),
            SamplingSearch(topk=3, seed=2, n_best=3, **common)]


@pytest.mark.parametrize("unit", [(4,), (4, 5), (6, 1, 5), (4, 5, 6, 1)])
def test_guard_stops_every_search_looping(unit: tuple[int, ...]) -> None:
    model = Scripted(looping_table(unit), vocab=7)
    src, lengths = batch([[4, 5, 6], [6]])
    for search in guarded_searches(3):
        out = search(model, src, lengths)
        assert all(longest_run(h.tokens) <= 3 for hyps in out for h in hyps)
        assert search.guard_fired > 0
    for search, plain in zip(guarded_searches(0), guarded_searches(0)):
        plain.max_repeat = 0
        out = search(model, src, lengths)
        assert [[h.tokens for h in hyps] for hyps in out] == [[h.tokens for h in hyps] for hyps in plain(model, src,
                                                                                                        lengths)]
        assert search.guard_fired == 0
        if isinstance(search, GreedySearch):
            assert longest_run(out[0][0].tokens) > 3  # it loops as it did before


def test_guard_leaves_a_repeating_source_alone() -> None:
    model = Scripted(looping_table((4,)), vocab=7)
    src, lengths = batch([[5, 5, 5, 5, 6], [7, 8, 7, 8, 7, 8, 7, 8], [5, 5, 5, 6]])
    assert repeats(src, lengths, 4).tolist() == [True, True, False]
    for search, free in zip(guarded_searches(3), guarded_searches(0)):
        out, ref = search(model, src, lengths), free(model, src, lengths)
        if not isinstance(search, SamplingSearch):  # (samples depend on which rows share the batch)
            assert [h.tokens for h in out[0]] == [h.tokens for h in ref[0]]
            assert [h.tokens for h in out[1]] == [h.tokens for h in ref[1]]
        assert longest_run(out[0][0].tokens) > 3 or isinstance(search, BeamSearch)
        assert all(longest_run(h.tokens) <= 3 for h in out[2])


def test_guard_is_on_by_default() -> None:
    search = build_search(DecodeConfig())
    assert search.max_repeat == 3 and search.no_repeat_ngram == 0 and search.repetition_penalty == 1.0
    cfg = DecodeConfig(no_repeat_ngram=3, repetition_penalty=1.3, max_repeat=0, search="sampling")
    search = build_search(cfg)
    assert (search.no_repeat_ngram, search.repetition_penalty, search.max_repeat) == (3, 1.3, 0)


# ----------------------------------------------------------------------------------------------
# 3. every family, greedy / beam / sampling, ensembles, batch == alone

LENGTHS = [5, 2, 7, 3]


def family_models():
    models = {name: random_model(name) for name in MODELS}
    models["ensemble"] = EnsembleModel([random_model("transformer"), random_model("bahdanau-gru")]).eval()
    return models


def controlled_searches():
    common = dict(max_len_a=1.5, max_len_b=4, no_repeat_ngram=2, max_repeat=2, repetition_penalty=1.2)
    return [GreedySearch(**common), BeamSearch(4, LengthPenalty("gnmt", 0.6), n_best=2, **common),
            SamplingSearch(topk=4, seed=2, n_best=2, **common)]


AVOID_LINES = [[[5]], [], [[6, 7], [8]], [[5, 5]]]
CONS_LINES = [[[7, 8]], [[5]], [], [[4], [9, 10]]]


@pytest.mark.parametrize("name", list(MODELS) + ["ensemble"])
def test_rules_hold_and_batch_equals_alone(name: str) -> None:
    model = family_models()[name]
    src, lengths = random_batch(LENGTHS, seed=3)
    for search in controlled_searches():
        out = search(model, src, lengths, avoid=AVOID_LINES)
        for i, (hyps, phrases) in enumerate(zip(out, AVOID_LINES)):
            for h in hyps:
                assert not has_repeated_ngram(h.tokens, 2)
                assert not any(contains(h.tokens, p) for p in phrases)
            if isinstance(search, SamplingSearch):
                continue  # sampling draws from one generator for the whole batch
            alone = search(model, src[i: i + 1, : lengths[i]], lengths[i: i + 1], avoid=[phrases])[0]
            assert [h.tokens for h in alone] == [h.tokens for h in hyps]
            assert [h.score for h in alone] == pytest.approx([h.score for h in hyps], abs=1e-5)


@pytest.mark.parametrize("name", list(MODELS) + ["ensemble"])
def test_constraints_met_and_batch_equals_alone(name: str) -> None:
    model = family_models()[name]
    src, lengths = random_batch(LENGTHS, seed=3)
    search = BeamSearch(4, LengthPenalty("gnmt", 0.6), n_best=2, max_len_a=1.5, max_len_b=4, return_attention=True)
    out = search(model, src, lengths, constraints=CONS_LINES, avoid=AVOID_LINES)
    for i, (hyps, phrases) in enumerate(zip(out, CONS_LINES)):
        assert all(contains(hyps[0].tokens, p) for p in phrases)
        assert not any(contains(hyps[0].tokens, p) for p in AVOID_LINES[i])
        if model.has_attention:
            assert hyps[0].attention.shape == (len(hyps[0].tokens) + 1, int(lengths[i]))
        alone = search(model, src[i: i + 1, : lengths[i]], lengths[i: i + 1], constraints=[phrases],
                       avoid=[AVOID_LINES[i]])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert [h.score for h in alone] == pytest.approx([h.score for h in hyps], abs=1e-5)


def test_prefix_and_constraint_together() -> None:
    model = random_model("transformer")
    src, lengths = random_batch([5, 3], seed=2)
    search = BeamSearch(4, max_len_a=1.5, max_len_b=4)
    out = search(model, src, lengths, prefixes=[[5, 6], []], constraints=[[[8, 9]], [[7]]])
    assert out[0][0].tokens[:2] == [5, 6] and contains(out[0][0].tokens, [8, 9])
    assert contains(out[1][0].tokens, [7])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["transformer", "bahdanau-gru"])
def test_cuda_equals_cpu_under_control(name: str) -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = random_model(name)
        src, lengths = random_batch(LENGTHS, seed=3)
        for search in controlled_searches()[:2]:
            kwargs = dict(avoid=AVOID_LINES)
            if isinstance(search, BeamSearch):
                kwargs["constraints"] = CONS_LINES
            cpu = search(model, src, lengths, **kwargs)
            gpu = search(copy.deepcopy(model).cuda(), src.cuda(), lengths.cuda(), **kwargs)
            for a, b in zip(cpu, gpu):
                assert [h.tokens for h in a] == [h.tokens for h in b]
                assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-4, abs=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_ctranslate2_export_passes_what_ctranslate2_has() -> None:
    from types import SimpleNamespace

    from mt.config import TransformerConfig
    from mt.interop.ctranslate2 import decoding_options

    def options(**decode):
        vocab = SimpleNamespace(placeholders=0)
        run = SimpleNamespace(config=SimpleNamespace(decode=DecodeConfig(**decode), model=TransformerConfig()),
                              src_vocab=vocab, tgt_vocab=vocab)
        return decoding_options(run)

    got = options(no_repeat_ngram=3, repetition_penalty=1.2, max_repeat=3)
    assert got["translate_batch"]["no_repeat_ngram_size"] == 3
    assert got["translate_batch"]["repetition_penalty"] == 1.2
    assert any("not passed: max_repeat=3" in n for n in got["notes"])
    assert any("constraints" in n for n in got["notes"]) and any("repetition_penalty" in n for n in got["notes"])
    plain = options(max_repeat=0)
    assert plain["translate_batch"]["no_repeat_ngram_size"] == 0 and plain["translate_batch"]["repetition_penalty"] == 1.0
    assert not any("max_repeat" in n or "repetition_penalty:" in n for n in plain["notes"])


# ----------------------------------------------------------------------------------------------
# 4. per-line constraints and avoid lists through the translator, `mt translate` and `mt serve`

TINY_LINES = ["the boy sees two houses .", "a man from the city sees the dog ."]


def tiny_translator(run_dir, **decode):
    from dataclasses import replace

    from mt.decode.translator import Translator, load_run

    run = load_run(run_dir)
    cfg = replace(run.config.decode, search="beam", beam=4, **decode)
    return run, Translator.for_model(run.model, run.src_vocab, run.tgt_vocab, cfg, alignments=True)


def test_translator_meets_constraints_and_avoids(tiny_run) -> None:
    from mt.decode.constraints import segmentations

    run, tr = tiny_translator(tiny_run)
    plain = tr.translate(TINY_LINES)
    word = next(w for w in plain[1].text.split() if w not in plain[0].text.split() and w[:1].isalnum())
    banned = next(w for w in plain[0].text.split() if w[:1].isalnum())
    warnings: list[str] = []
    tr.warn = warnings.append
    out = tr.translate(TINY_LINES, constraints=[[word], []], avoid=[[banned], []])
    assert word in out[0].text.split() and out[1].text == plain[1].text
    pieces = [t for t in out[0].tokens[:-1]]
    ids = run.tgt_vocab.encode(" ".join(pieces).replace(" ", "").replace("\u2581", " "))
    assert not any(contains(ids, form) for form in segmentations(run.tgt_vocab, banned))
    marked = [p for p, m in zip(out[0].tokens, out[0].constraint_tokens) if m]
    assert "".join(marked).replace("\u2581", " ").strip() == word
    assert out[1].constraint_tokens is None and not warnings
    too_long = " ".join([word] * 40)  # more pieces than the length limit
    again = tr.translate(TINY_LINES[:1], constraints=[[too_long]])
    assert again[0].text == plain[0].text
    assert len(warnings) == 1 and "line 1" in warnings[0] and "length limit" in warnings[0]


def test_cli_constraints_jsonl_and_file(tiny_run, tmp_path) -> None:
    import json

    from conftest import assert_clean_failure, run_mt

    _, tr = tiny_translator(tiny_run)
    plain = tr.translate(TINY_LINES)
    word = next(w for w in plain[1].text.split() if w not in plain[0].text.split() and w[:1].isalnum())
    items = [{"text": TINY_LINES[0], "constraints": [word]}, {"text": TINY_LINES[1], "avoid": ["zzz"]},
             {"text": "", "constraints": [" ".join([word] * 40)]}]
    r = run_mt("translate", "-m", tiny_run, "-b", "4", "--input-format", "jsonl", "--json",
               stdin="".join(json.dumps(i) + "\n" for i in items))
    assert r.returncode == 0, r.explain()
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and word in rows[0]["translation"].split()
    assert len(rows[0]["constraint_tokens"]) == len(rows[0]["tokens"]) and any(rows[0]["constraint_tokens"])
    assert "constraint_tokens" not in rows[1] and "line 3" in r.stderr
    terms = tmp_path / "terms.jsonl"
    terms.write_text(json.dumps([word]) + "\n[]\n", encoding="utf-8")
    r = run_mt("translate", "-m", tiny_run, "-b", "4", "--constraints", terms, stdin="\n".join(TINY_LINES) + "\n")
    assert r.returncode == 0, r.explain()
    assert word in r.stdout.splitlines()[0].split() and len(r.stdout.splitlines()) == 2
    terms.write_text('["ok"]\n{"no": 1}\n', encoding="utf-8")
    assert_clean_failure(run_mt("translate", "-m", tiny_run, "--constraints", terms,
                                stdin="\n".join(TINY_LINES) + "\n"), "terms.jsonl:2", "list of strings")
    bad = '{"text": "a", "avoid": "word"}\n'
    assert_clean_failure(run_mt("translate", "-m", tiny_run, "--input-format", "jsonl", stdin=bad),
                         "stdin:1", '"avoid"', "list of strings")


def test_serve_takes_constraints_and_avoid(tiny_run) -> None:
    from fastapi.testclient import TestClient

    from mt.decode.translator import load_run
    from mt.serve.app import ServedModel, TranslationService, create_app
    from mt.config import ServeLimits

    _, tr = tiny_translator(tiny_run)
    plain = tr.translate(TINY_LINES)
    word = next(w for w in plain[1].text.split() if w not in plain[0].text.split() and w[:1].isalnum())
    service = TranslationService([ServedModel("m", load_run(tiny_run), torch.device("cpu"))], ServeLimits())
    with TestClient(create_app(service)) as client:
        r = client.post("/translate", json={"text": TINY_LINES[0], "constraints": [word], "beam": 4})
        assert r.status_code == 200, r.text
        assert word in r.json()["translations"][0]["translation"].split()
        r = client.post("/translate", json={"texts": TINY_LINES, "constraints": [[word], []], "avoid": [[], ["x"]],
                                            "beam": 4, "no_repeat_ngram": 2})
        assert r.status_code == 200, r.text
        assert word in r.json()["translations"][0]["translation"].split()
        r = client.post("/translate", json={"texts": TINY_LINES, "constraints": [[word]]})
        assert r.status_code == 422 and "constraints" in r.text


def test_phrases_are_segmented_as_in_running_text(tiny_run) -> None:
    from mt.decode.constraints import segmentations
    from mt.decode.translator import load_run

    vocab = load_run(tiny_run).tgt_vocab
    line = vocab.encode("the boy sees the house , the dog")
    (word,) = segmentations(vocab, "house")
    assert contains(line, word) and vocab.pieces(word)[0].startswith("\u2581")  # as after a space
    comma = segmentations(vocab, ",")
    assert contains(line, comma[0]) and vocab.pieces(comma[0])[0] == ","  # attached: no word-start mark
    assert len(comma) == 2 and vocab.pieces(comma[1])[0] == "\u2581"
    assert segmentations(vocab, "  ") == []
