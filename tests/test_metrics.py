"""mt.metrics: the scores are sacrebleu's, with signatures; the paired bootstrap is sacrebleu's test."""

from __future__ import annotations

import itertools
import os

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from mt import MTError
from mt.metrics import METRICS, MetricResult, paired_bootstrap, parse_metrics, score

REFS = [
    "The cat sat on the red mat this morning.",
    "There is a big house near the old oak tree.",
    "She reads a long book every night before bed.",
    "We will travel to the coast next summer.",
]
HYPS = [
    "The cat sat on the mat this morning.",
    "There is a large house near the old tree.",
    "She reads a book every night before sleeping.",
    "We travel to the sea coast next summer.",
]
REFS2 = [
    "A cat was sitting on the red mat this morning.",
    "A big house stands near the old oak tree.",
    "Every night she reads a long book before bed.",
    "Next summer we will travel to the coast.",
]


def test_scores_equal_sacrebleu_corpus_functions() -> None:
    got = score(HYPS, REFS, metrics=("bleu", "chrf", "ter"))
    assert list(got) == ["bleu", "chrf", "ter"]
    assert got["bleu"].score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert got["chrf"].score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert got["ter"].score == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)
    assert 0 < got["bleu"].score < 100
    assert got["bleu"].text == str(sacrebleu.corpus_bleu(HYPS, [REFS]))
    assert [r.name for r in got.values()] == ["BLEU", "chrF2", "TER"]


def test_multiple_references_and_options_are_passed_to_sacrebleu() -> None:
    got = score(HYPS, [REFS, REFS2], metrics=("bleu", "chrf"), tokenize="intl", lowercase=True)
    want_bleu = sacrebleu.corpus_bleu(HYPS, [REFS, REFS2], tokenize="intl", lowercase=True)
    assert got["bleu"].score == pytest.approx(want_bleu.score)
    assert got["chrf"].score == pytest.approx(CHRF(lowercase=True).corpus_score(HYPS, [REFS, REFS2]).score)
    assert "nrefs:2" in got["bleu"].signature
    assert "tok:intl" in got["bleu"].signature and "case:lc" in got["bleu"].signature


def test_chrf_plus_plus() -> None:
    got = score(HYPS, REFS, metrics=("chrf++",))
    assert got["chrf++"].name == "chrF2++"
    assert got["chrf++"].score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)


def test_perfect_hypothesis_scores_100_bleu_and_0_ter() -> None:
    got = score(REFS, REFS, metrics=("bleu", "chrf", "ter"))
    assert got["bleu"].score == pytest.approx(100.0)
    assert got["chrf"].score == pytest.approx(100.0)
    assert got["ter"].score == pytest.approx(0.0)


def test_signature_matches_sacrebleu() -> None:
    got = score(HYPS, REFS, metrics=("bleu", "chrf"))
    assert isinstance(got["bleu"], MetricResult)
    for result in got.values():
        assert "nrefs:1" in result.signature
        assert f"version:{sacrebleu.__version__}" in result.signature
    bleu = BLEU()
    bleu.corpus_score(HYPS, [REFS])
    assert got["bleu"].signature == bleu.get_signature().format()


def test_precision_sets_the_digits_of_the_text() -> None:
    text = score(HYPS, REFS, metrics=("chrf",), precision=4)["chrf"].text
    assert text == sacrebleu.corpus_chrf(HYPS, [REFS]).format(width=4)
    assert len(text.split(" = ")[1].split(".")[1]) == 4


def test_mismatched_line_counts_raise_naming_both_counts() -> None:
    with pytest.raises(MTError, match=r"3 lines .* 4"):
        score(HYPS[:3], REFS)
    with pytest.raises(MTError, match=r"4 lines but reference 2 has 3"):
        score(HYPS, [REFS, REFS2[:3]])


@pytest.mark.parametrize("hyps, refs", [([], []), ([], REFS), (HYPS, [])])
def test_empty_input_raises(hyps: list[str], refs: list[str]) -> None:
    with pytest.raises(MTError):
        score(hyps, refs)


def test_unknown_metric_and_tokenizer_raise() -> None:
    with pytest.raises(MTError, match="unknown metric 'meteor'"):
        score(HYPS, REFS, metrics=("bleu", "meteor"))
    with pytest.raises(MTError, match="unknown tokenizer"):
        score(HYPS, REFS, tokenize="whitespace")


def test_parse_metrics() -> None:
    assert parse_metrics("BLEU, chrf,ter,bleu") == ("bleu", "chrf", "ter")
    assert set(parse_metrics(",".join(METRICS))) == set(METRICS)
    for bad in ("", " , ", "bleu,rouge"):
        with pytest.raises(MTError):
            parse_metrics(bad)


# ----------------------------------------------------------------------------------------------
# paired bootstrap

SUBJECTS = ["the old man", "a young girl", "my neighbour", "the teacher", "our dog", "the children"]
VERBS = ["saw", "painted", "found", "carried"]
OBJECTS = ["a red boat", "the small house", "an old bicycle", "the wooden table", "a blue kite"]


def _corpus() -> tuple[list[str], list[str], list[str]]:
    """References, a weak baseline (drops and swaps words) and a clearly better system (one slip)."""
    refs, weak, good = [], [], []
    for i, (s, v, o) in enumerate(itertools.islice(itertools.product(SUBJECTS, VERBS, OBJECTS), 0, 120, 3)):
        refs.append(f"yesterday {s} {v} {o} near the river .")
        weak.append(f"{s} {v} {o.split()[-1]} by the water .")
        good.append(f"yesterday {s} {v} {o} near the river ." if i % 4 else f"yesterday {s} {v} {o} by the river .")
    return refs, weak, good


def test_paired_bootstrap_equals_sacrebleu_paired_test() -> None:
    refs, weak, good = _corpus()
    got = paired_bootstrap({"weak": weak, "good": good}, refs, metrics=("bleu", "chrf"), n_samples=200)
    metrics = {"bleu": BLEU(), "chrf": CHRF()}
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "12345"
    try:
        _, want = PairedTest([("weak", weak), ("good", good)], metrics, [refs], test_type="bs", n_samples=200)()
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old
    for mid, column in [("bleu", "BLEU"), ("chrf", "chrF2")]:
        for row, system in enumerate(["weak", "good"]):
            r, w = got[system][mid], want[column][row]
            assert (r.score, r.mean, r.ci) == pytest.approx((w.score, w.mean, w.ci))
            assert r.p_value == w.p_value
        assert got["weak"][mid].p_value is None  # the baseline
        assert "bs:200" in got["good"][mid].signature and "seed:12345" in got["good"][mid].signature


def test_paired_bootstrap_better_system_gets_lower_p_value_than_identical_one() -> None:
    refs, weak, good = _corpus()
    got = paired_bootstrap({"base": weak, "same": list(weak), "better": good}, refs, metrics=("bleu", "chrf", "ter"))
    assert list(got) == ["base", "same", "better"]
    for mid in ("bleu", "chrf", "ter"):
        assert got["same"][mid].score == got["base"][mid].score
        assert got["same"][mid].p_value == 1.0
        assert got["better"][mid].p_value < 0.05
    assert got["better"]["bleu"].score > got["base"]["bleu"].score + 20
    assert got["better"]["ter"].score < got["base"]["ter"].score


def test_paired_bootstrap_is_seeded_and_leaves_the_environment_alone() -> None:
    refs, weak, good = _corpus()
    before = os.environ.get("SACREBLEU_SEED")
    a = paired_bootstrap({"a": weak, "b": good}, refs, metrics=("chrf",), n_samples=100, seed=7)
    b = paired_bootstrap({"a": weak, "b": good}, refs, metrics=("chrf",), n_samples=100, seed=7)
    assert a == b
    assert "seed:7" in a["b"]["chrf"].signature
    assert os.environ.get("SACREBLEU_SEED") == before


def test_paired_bootstrap_rejects_bad_input() -> None:
    refs, weak, good = _corpus()
    with pytest.raises(MTError, match="at least two systems"):
        paired_bootstrap({"a": weak}, refs)
    with pytest.raises(MTError, match="lines"):
        paired_bootstrap({"a": weak, "b": good[:-1]}, refs)
    with pytest.raises(MTError, match="samples"):
        paired_bootstrap({"a": weak, "b": good}, refs, n_samples=0)
