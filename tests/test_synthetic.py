"""The built-in synthetic language pair: determinism, splits, the reference rules, the lexicon."""

from __future__ import annotations

import random
import re
from statistics import mean

import pytest

from mt.data import synthetic
from mt.data.synthetic import generate, generate_pair, splits, translate_reference

TARGET_VERB_FORMS = {
    stem + ending for _, _, stem in synthetic.VERBS for ending in synthetic.VERB_ENDINGS.values()
}


def words(sentence: str) -> list[str]:
    return sentence.replace(",", " ,").replace(".", " .").split()


def n_clauses(src: str) -> int:
    return 1 + sum(src.count(c) for c in (" and ", ", but ", ", while "))


# ---------------------------------------------------------------------------- generation


def test_same_seed_same_output_different_seed_different():
    assert generate(200, seed=1) == generate(200, seed=1)
    assert generate(200, seed=1) != generate(200, seed=2)
    assert generate(50, seed=7, max_clauses=3) == generate(50, seed=7, max_clauses=3)


def test_longer_call_extends_shorter_one():
    assert generate(300, seed=4)[:100] == generate(100, seed=4)


def test_generate_pair_uses_only_the_given_rng():
    a = generate_pair(random.Random(5), max_clauses=3)
    random.seed(123)  # global state must not matter
    b = generate_pair(random.Random(5), max_clauses=3)
    assert a == b


def test_sources_unique_within_a_call():
    data = generate(2000, seed=3, max_clauses=1)
    assert len({s for s, _ in data}) == len(data) == 2000


def test_generated_pairs_match_reference():
    for max_clauses in (1, 2, 4):
        for src, tgt in generate(300, seed=11, max_clauses=max_clauses):
            assert translate_reference(src) == tgt


def test_clause_counts_respect_bounds():
    data = generate(400, seed=2, max_clauses=4, min_clauses=2)
    counts = {n_clauses(s) for s, _ in data}
    assert counts == {2, 3, 4}
    assert {n_clauses(s) for s, _ in generate(100, seed=2, max_clauses=1)} == {1}
    # the target has the same number of clauses (conjunctions carry over)
    for src, tgt in data:
        assert n_clauses(src) == 1 + sum(tgt.count(c) for c in (" ok ", ", aber ", ", indes "))


def test_lengths_grow_with_max_clauses():
    lengths = [mean(len(words(s)) for s, _ in generate(500, seed=1, max_clauses=m)) for m in (1, 2, 4)]
    assert lengths[0] < lengths[1] < lengths[2]
    assert 7 <= lengths[0] <= 12  # words per clause (with the final ".")


def test_no_empty_sentences_and_plain_characters():
    pattern = re.compile(r"[a-z]+(,? [a-z]+)*\.")
    for src, tgt in generate(500, seed=9, max_clauses=3):
        assert src and tgt
        assert pattern.fullmatch(src), src
        assert pattern.fullmatch(tgt), tgt


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate(5, seed=1, max_clauses=1, min_clauses=2)
    with pytest.raises(ValueError):
        generate(5, seed=1, max_clauses=0)
    with pytest.raises(ValueError):
        generate(-1, seed=1)
    assert generate(0, seed=1) == []


# ---------------------------------------------------------------------------- splits


def test_splits_sizes_disjoint_and_deterministic():
    data = splits(train=1000, valid=100, test=100, seed=5, max_clauses=2)
    assert set(data) == {"train", "valid", "test"}
    assert [len(data[k]) for k in ("train", "valid", "test")] == [1000, 100, 100]
    sources = {k: {s for s, _ in v} for k, v in data.items()}
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    assert splits(1000, 100, 100, seed=5, max_clauses=2) == data
    assert splits(1000, 100, 100, seed=6, max_clauses=2) != data


def test_splits_disjoint_for_short_sentences():
    # one-clause sentences are the likeliest to repeat; none may leak from train into valid / test
    data = splits(train=3000, valid=300, test=300, seed=1, max_clauses=1)
    train = {s for s, _ in data["train"]}
    assert not train & {s for s, _ in data["valid"] + data["test"]}


# ---------------------------------------------------------------------------- the rules


def test_pinned_translations():
    cases = {
        "the dog sees the cat.": "der hund di katza sihet.",
        "the dogs see the cat.": "dei hunden di katza sihon.",
        "the cat sees the dog.": "di katza den hund sihet.",
        "the big dog sees a small cat in the garden.":
            "der hund groter ind di garda ena katza klina sihet.",
        "two old men like this house, but children watch the river.":
            "twe menden alten dit huse mogon, aber kindi den flus skauon.",
    }
    for src, tgt in cases.items():
        assert translate_reference(src) == tgt


def test_verb_moves_to_the_end_of_each_clause():
    for src, tgt in generate(300, seed=8, max_clauses=1):
        s, t = words(src), words(tgt)
        verb_src = next(i for i, w in enumerate(s) if w in synthetic._VERB_FORMS)
        verb_tgt = next(i for i, w in enumerate(t) if w in TARGET_VERB_FORMS)
        assert verb_tgt == len(t) - 2  # last word before "."
        assert verb_src < len(s) - 2  # the source verb is followed by its object
        assert verb_tgt != verb_src


def test_adjectives_follow_the_noun():
    assert translate_reference("the red car sees the dog.") == "der wagen roter den hund sihet."
    assert translate_reference("the car sees the dog.") == "der wagen den hund sihet."


def test_prepositional_phrase_moves_before_the_object():
    assert translate_reference("the dog sees the cat near the tree.") == (
        "der hund bi den bom di katza sihet."
    )


def test_verb_agrees_with_subject_number():
    singular = translate_reference("the tired dog carries a box under the table.")
    plural = translate_reference("the tired dogs carry a box under the table.")
    s, p = words(singular), words(plural)
    assert len(s) == len(p)
    differ = [i for i in range(len(s)) if s[i] != p[i]]
    # determiner, noun, adjective of the subject and the far-away verb change; nothing else
    assert differ == [0, 1, 2, len(s) - 2]
    assert s[-2] != p[-2]


def test_gender_picks_determiner_and_adjective_ending():
    dog = words(translate_reference("the old dog sees a cup."))  # masculine
    cat = words(translate_reference("the old cat sees a cup."))  # feminine
    child = words(translate_reference("the old child sees a cup."))  # neuter
    assert len({dog[0], cat[0], child[0]}) == 3
    assert len({dog[2], cat[2], child[2]}) == 3
    assert {dog[2], cat[2], child[2]} <= {"alt" + e for e in ("er", "a", "es")}


def test_masculine_object_takes_the_oblique_case():
    subject = words(translate_reference("a big dog sees the cup."))
    obj = words(translate_reference("the cup sees a big dog."))
    assert subject[:3] == ["en", "hund", "groter"]
    assert obj[2:5] == ["enen", "hund", "grotem"]


# ---------------------------------------------------------------------------- rejection


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "the dog sees the cat",  # no final period
        "the dog see the cat.",  # agreement
        "the dogs sees the cat.",
        "a dogs see the cat.",  # determiner number
        "two dog sees the cat.",
        "dog sees the cat.",  # bare singular
        "the dog sees.",  # no object
        "the dog the cat.",  # no verb
        "the dog sees the cat and.",
        "the dog sees the cat, and the cat sees the dog.",  # comma only before but / while
        "the dog sees the cat but the cat sees the dog.",
        "the dog sees the cat. the cat sees the dog.",
        "the dog sees the unicorn.",
        "The dog sees the cat.",
        "the  dog sees the cat.",  # not canonical spacing
        "the dog sees the cat in.",
    ],
)
def test_ungrammatical_input_raises(bad):
    with pytest.raises(ValueError):
        translate_reference(bad)


# ---------------------------------------------------------------------------- the lexicon


def test_source_categories_are_disjoint():
    categories = [
        set(synthetic._NOUN_FORMS),
        set(synthetic._VERB_FORMS),
        set(synthetic.ADJECTIVES),
        set(synthetic.PREPOSITIONS),
        set(synthetic.DETERMINERS),
        set(synthetic.CONJUNCTIONS),
    ]
    assert sum(len(c) for c in categories) == len(set().union(*categories))
    assert len(synthetic._NOUN_FORMS) == 2 * len(synthetic.NOUNS)
    assert len(synthetic._VERB_FORMS) == 2 * len(synthetic.VERBS)


def test_target_forms_are_unambiguous():
    nouns = [stem + synthetic.NOUN_ENDINGS[g, n] for *_, stem, g in synthetic.NOUNS for n in ("sg", "pl")]
    assert len(set(nouns)) == len(nouns)
    assert len(TARGET_VERB_FORMS) == 2 * len(synthetic.VERBS)
    assert len(set(synthetic.ADJECTIVES.values())) == len(synthetic.ADJECTIVES)
    assert len(set(synthetic.PREPOSITIONS.values())) == len(synthetic.PREPOSITIONS)
    assert not set(nouns) & TARGET_VERB_FORMS


def test_vocabulary_is_small_and_lexicon_sizes_as_designed():
    assert 30 <= len(synthetic.NOUNS) <= 60
    assert len(synthetic.VERBS) >= 15 and len(synthetic.ADJECTIVES) >= 15
    data = generate(3000, seed=1, max_clauses=2)
    assert len({w for s, _ in data for w in words(s)}) < 250
    assert len({w for _, t in data for w in words(t)}) < 350
