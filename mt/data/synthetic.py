"""A built-in generated language pair: an English-like source and an invented German-like target.

Used by ``make demo`` (a small model learns it in minutes on a CPU) and by tests that need
long-distance reordering and agreement (attention versus a plain encoder-decoder).

Source grammar (lowercase words, "," before "but" / "while", final "." on the last word)::

    sentence := clause (conj clause)* "."          conj := "and" | ", but" | ", while"
    clause   := np verb np [pp]                     pp   := prep np
    np       := [det] adj* noun                     (det omitted only with a plural noun)

    the big dog sees a small cat in the garden.

Determiners: "a" and "this" take a singular noun; "these", "two", "three" a plural one; "the"
either. The verb agrees with the subject ("sees" / "see").

Target rules (a deterministic function of the source, so BLEU 100 is attainable):

- clause order is subject, pp, object, verb (verb-final; the pp moves in front of the object)
- adjectives follow their noun, in the source order
- every noun has a gender (m / f / n) that picks the determiner and the adjective ending;
  number changes the noun, determiner, adjective and verb endings; masculine singular noun
  phrases have a separate oblique case (objects and prepositional objects)
- the verb agrees in number with the subject, which is now the far end of the clause

    der hund groter ind di garda ena katza klina sihet.

``generate`` renders a source sentence and always takes its target from ``translate_reference``,
so the two cannot drift apart. Only the standard library is used; all randomness comes from the
``random.Random`` passed in or built from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["generate", "generate_pair", "reference_alignment", "splits", "translate_reference"]

# --------------------------------------------------------------------------------------------
# Lexicon. Source forms and invented target stems; the target word is stem + ending.
# --------------------------------------------------------------------------------------------

#: (singular, plural, target stem, gender)
NOUNS: tuple[tuple[str, str, str, str], ...] = (
    ("dog", "dogs", "hund", "m"),
    ("cat", "cats", "katz", "f"),
    ("man", "men", "mend", "m"),
    ("woman", "women", "frov", "f"),
    ("child", "children", "kind", "n"),
    ("bird", "birds", "fogel", "m"),
    ("horse", "horses", "perd", "n"),
    ("house", "houses", "hus", "n"),
    ("tree", "trees", "bom", "m"),
    ("car", "cars", "wagen", "m"),
    ("book", "books", "buk", "n"),
    ("table", "tables", "tisk", "m"),
    ("chair", "chairs", "stul", "m"),
    ("garden", "gardens", "gard", "f"),
    ("city", "cities", "stad", "f"),
    ("river", "rivers", "flus", "m"),
    ("friend", "friends", "frend", "m"),
    ("teacher", "teachers", "lerar", "m"),
    ("student", "students", "studir", "f"),
    ("farmer", "farmers", "baur", "m"),
    ("king", "kings", "konig", "m"),
    ("queen", "queens", "konin", "f"),
    ("boy", "boys", "knab", "m"),
    ("girl", "girls", "medk", "n"),
    ("apple", "apples", "apfel", "m"),
    ("flower", "flowers", "blum", "f"),
    ("box", "boxes", "kist", "f"),
    ("ship", "ships", "skip", "n"),
    ("mountain", "mountains", "berg", "m"),
    ("window", "windows", "fenst", "n"),
    ("door", "doors", "tur", "f"),
    ("letter", "letters", "brif", "m"),
    ("doctor", "doctors", "dokter", "m"),
    ("baker", "bakers", "bekar", "m"),
    ("mouse", "mice", "mus", "f"),
    ("fox", "foxes", "voks", "m"),
    ("wolf", "wolves", "wulf", "m"),
    ("bear", "bears", "bar", "m"),
    ("lamp", "lamps", "lamp", "f"),
    ("cup", "cups", "tas", "f"),
    ("key", "keys", "slusl", "m"),
    ("ball", "balls", "bal", "m"),
    ("road", "roads", "strat", "f"),
    ("boat", "boats", "bot", "n"),
    ("field", "fields", "feld", "n"),
    ("village", "villages", "dorp", "n"),
    ("soldier", "soldiers", "soldat", "m"),
    ("sister", "sisters", "swest", "f"),
)

#: (third person singular, plural, target stem)
VERBS: tuple[tuple[str, str, str], ...] = (
    ("sees", "see", "sih"),
    ("likes", "like", "mog"),
    ("follows", "follow", "folg"),
    ("finds", "find", "vind"),
    ("helps", "help", "hilf"),
    ("carries", "carry", "trag"),
    ("watches", "watch", "skau"),
    ("chases", "chase", "jag"),
    ("holds", "hold", "halt"),
    ("pushes", "push", "druk"),
    ("pulls", "pull", "zih"),
    ("meets", "meet", "tref"),
    ("visits", "visit", "besuk"),
    ("feeds", "feed", "futer"),
    ("calls", "call", "ruf"),
    ("paints", "paint", "mal"),
)

#: source adjective -> target stem
ADJECTIVES: dict[str, str] = {
    "big": "grot",
    "small": "klin",
    "old": "alt",
    "young": "jung",
    "red": "rot",
    "green": "grun",
    "blue": "blau",
    "happy": "glik",
    "tired": "mud",
    "quiet": "stil",
    "brave": "tapf",
    "clever": "klug",
    "lazy": "ful",
    "strange": "fremd",
    "warm": "varm",
    "heavy": "swar",
}

PREPOSITIONS: dict[str, str] = {
    "in": "ind",
    "near": "bi",
    "under": "unter",
    "behind": "hint",
    "with": "mit",
    "on": "op",
    "from": "fon",
}

#: source conjunction -> (target conjunction, preceded by a comma in both languages)
CONJUNCTIONS: dict[str, tuple[str, bool]] = {
    "and": ("ok", False),
    "but": ("aber", True),
    "while": ("indes", True),
}

#: source determiner -> the grammatical number it requires (None: either)
DETERMINERS: dict[str, str | None] = {
    "the": None,
    "a": "sg",
    "this": "sg",
    "these": "pl",
    "two": "pl",
    "three": "pl",
}

# Target morphology. Keys: gender, number ("sg" / "pl"), case ("nom" / "obl").
NOUN_ENDINGS: dict[tuple[str, str], str] = {
    ("m", "sg"): "",
    ("m", "pl"): "en",
    ("f", "sg"): "a",
    ("f", "pl"): "as",
    ("n", "sg"): "e",
    ("n", "pl"): "i",
}
VERB_ENDINGS: dict[str, str] = {"sg": "et", "pl": "on"}


def _adjective_ending(gender: str, number: str, case: str) -> str:
    if number == "pl":
        return {"m": "en", "f": "as", "n": "i"}[gender]
    if gender == "m":
        return "er" if case == "nom" else "em"
    return {"f": "a", "n": "es"}[gender]


def _target_determiner(det: str | None, gender: str, number: str, case: str) -> str | None:
    """The target determiner; None when the source has none (a bare plural)."""
    if det is None:
        return None
    if det in ("two", "three"):
        return {"two": "twe", "three": "dri"}[det]
    if det == "these":
        return "dise"
    masc_obl = gender == "m" and case == "obl"
    if det == "the":
        if number == "pl":
            return "dei"
        return "den" if masc_obl else {"m": "der", "f": "di", "n": "dat"}[gender]
    if det == "a":
        return "enen" if masc_obl else {"m": "en", "f": "ena", "n": "et"}[gender]
    if det == "this":
        return "disen" if masc_obl else {"m": "dis", "f": "disa", "n": "dit"}[gender]
    raise AssertionError(det)


# Source form lookups, built once from the tables above (constants, never mutated).
_NOUN_FORMS: dict[str, tuple[int, str]] = {
    form: (i, number)
    for i, entry in enumerate(NOUNS)
    for form, number in ((entry[0], "sg"), (entry[1], "pl"))
}
_VERB_FORMS: dict[str, tuple[int, str]] = {
    form: (i, number)
    for i, entry in enumerate(VERBS)
    for form, number in ((entry[0], "sg"), (entry[1], "pl"))
}

# --------------------------------------------------------------------------------------------
# Parsed structure
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NounPhrase:
    det: str | None
    adjectives: tuple[str, ...]
    noun: int  # index into NOUNS
    number: str  # "sg" / "pl"

    def source(self) -> list[str]:
        sg, pl, _, _ = NOUNS[self.noun]
        words = [self.det] if self.det else []
        return words + list(self.adjectives) + [sg if self.number == "sg" else pl]

    def target(self, case: str) -> list[str]:
        _, _, stem, gender = NOUNS[self.noun]
        det = _target_determiner(self.det, gender, self.number, case)
        words = [det] if det else []
        words.append(stem + NOUN_ENDINGS[gender, self.number])
        ending = _adjective_ending(gender, self.number, case)
        words.extend(ADJECTIVES[a] + ending for a in self.adjectives)
        return words


@dataclass(frozen=True)
class Clause:
    subject: NounPhrase
    verb: int  # index into VERBS
    obj: NounPhrase
    pp: tuple[str, NounPhrase] | None

    def source(self) -> list[str]:
        sg, pl, _ = VERBS[self.verb]
        words = self.subject.source() + [sg if self.subject.number == "sg" else pl]
        words += self.obj.source()
        if self.pp is not None:
            words += [self.pp[0]] + self.pp[1].source()
        return words

    def target(self) -> list[str]:
        words = self.subject.target("nom")
        if self.pp is not None:
            words += [PREPOSITIONS[self.pp[0]]] + self.pp[1].target("obl")
        words += self.obj.target("obl")
        words.append(VERBS[self.verb][2] + VERB_ENDINGS[self.subject.number])
        return words


def _render(clauses: list[Clause], conjunctions: list[str], target: bool) -> str:
    """Join clauses: "x and y", "x, but y"; a final "." on the last word."""
    text = " ".join(clauses[0].target() if target else clauses[0].source())
    for conj, clause in zip(conjunctions, clauses[1:]):
        word, comma = CONJUNCTIONS[conj]
        words = clause.target() if target else clause.source()
        text += ("," if comma else "") + " " + (word if target else conj) + " " + " ".join(words)
    return text + "."


# --------------------------------------------------------------------------------------------
# Parsing and the reference translation
# --------------------------------------------------------------------------------------------


def _tokenize(src: str) -> list[str]:
    if not isinstance(src, str):
        raise ValueError(f"expected a string, got {type(src).__name__}")
    return src.replace(",", " , ").replace(".", " . ").split()


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = _tokenize(src)
        self.pos = 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"not a sentence of the synthetic grammar ({what}): {self.src!r}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        word = self.peek()
        if word is None:
            raise self.error("unexpected end")
        self.pos += 1
        return word

    def noun_phrase(self) -> NounPhrase:
        det = self.take() if self.peek() in DETERMINERS else None
        adjectives = []
        while self.peek() in ADJECTIVES:
            adjectives.append(self.take())
        word = self.take()
        if word not in _NOUN_FORMS:
            raise self.error(f"expected a noun, got {word!r}")
        noun, number = _NOUN_FORMS[word]
        required = DETERMINERS[det] if det else "pl"  # a bare noun must be plural
        if required is not None and required != number:
            raise self.error(f"{det or 'no determiner'!s} with {word!r}")
        return NounPhrase(det, tuple(adjectives), noun, number)

    def clause(self) -> Clause:
        subject = self.noun_phrase()
        word = self.take()
        if word not in _VERB_FORMS:
            raise self.error(f"expected a verb, got {word!r}")
        verb, number = _VERB_FORMS[word]
        if number != subject.number:
            raise self.error(f"verb {word!r} does not agree with its subject")
        obj = self.noun_phrase()
        pp = None
        if self.peek() in PREPOSITIONS:
            prep = self.take()
            pp = (prep, self.noun_phrase())
        return Clause(subject, verb, obj, pp)

    def sentence(self) -> tuple[list[Clause], list[str]]:
        clauses, conjunctions = [self.clause()], []
        while True:
            word = self.take()
            if word == ".":
                break
            comma = word == ","
            if comma:
                word = self.take()
            if word not in CONJUNCTIONS or CONJUNCTIONS[word][1] != comma:
                raise self.error(f"unexpected {word!r}")
            conjunctions.append(word)
            clauses.append(self.clause())
        if self.pos != len(self.tokens):
            raise self.error("text after the final '.'")
        return clauses, conjunctions


def translate_reference(src: str) -> str:
    """The gold translation of a source sentence; ValueError if it is not grammatical."""
    parser = _Parser(src)
    clauses, conjunctions = parser.sentence()
    if _render(clauses, conjunctions, target=False) != src.strip():
        raise parser.error("not in canonical spacing")
    return _render(clauses, conjunctions, target=True)


def _np_keys(np: NounPhrase, where: tuple, target: bool) -> list[tuple]:
    """One key per word of NounPhrase.source() / .target(), naming the word's role."""
    det = [where + ("det",)] if np.det else []
    adjectives = [where + ("adj", i) for i in range(len(np.adjectives))]
    noun = [where + ("noun",)]
    return det + noun + adjectives if target else det + adjectives + noun


def _clause_keys(clause: Clause, c: int, target: bool) -> list[tuple]:
    """One key per word of Clause.source() / .target()."""
    subject = _np_keys(clause.subject, (c, "subj"), target)
    obj = _np_keys(clause.obj, (c, "obj"), target)
    pp = [] if clause.pp is None else [(c, "prep")] + _np_keys(clause.pp[1], (c, "pp"), target)
    verb = [(c, "verb")]
    return subject + pp + obj + verb if target else subject + verb + obj + pp


def reference_alignment(src: str) -> list[tuple[int, int]]:
    """The true word alignment of a source sentence and its reference translation: (source word,
    target word) index pairs over whitespace-separated words (a "," or "." belongs to the word it is
    attached to). Every word has exactly one partner: determiner to determiner, adjective to
    adjective (in order), noun, verb, preposition and conjunction to their translation."""
    clauses, conjunctions = _Parser(src).sentence()
    sides = []
    for target in (False, True):
        keys = _clause_keys(clauses[0], 0, target)
        for i, clause in enumerate(clauses[1:], start=1):
            keys += [("conj", i)] + _clause_keys(clause, i, target)
        sides.append({key: position for position, key in enumerate(keys)})
    source, target = sides
    return sorted((position, target[key]) for key, position in source.items())


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

_SG_DETERMINERS = (("the", 5), ("a", 3), ("this", 2))
_PL_DETERMINERS = (("the", 7), ("these", 3), ("two", 3), ("three", 3), (None, 4))
_ADJECTIVE_COUNTS = ((0, 4), (1, 4), (2, 2))
_PP_PROBABILITY = 0.6
_PLURAL_PROBABILITY = 0.4


def _choose(rng: random.Random, weighted: tuple[tuple, ...]):
    return rng.choices([x for x, _ in weighted], weights=[w for _, w in weighted])[0]


def _noun_phrase(rng: random.Random) -> NounPhrase:
    number = "pl" if rng.random() < _PLURAL_PROBABILITY else "sg"
    det = _choose(rng, _PL_DETERMINERS if number == "pl" else _SG_DETERMINERS)
    adjectives = tuple(rng.sample(sorted(ADJECTIVES), _choose(rng, _ADJECTIVE_COUNTS)))
    return NounPhrase(det, adjectives, rng.randrange(len(NOUNS)), number)


def _clause(rng: random.Random) -> Clause:
    subject = _noun_phrase(rng)
    verb = rng.randrange(len(VERBS))
    obj = _noun_phrase(rng)
    pp = None
    if rng.random() < _PP_PROBABILITY:
        pp = (rng.choice(sorted(PREPOSITIONS)), _noun_phrase(rng))
    return Clause(subject, verb, obj, pp)


def generate_pair(rng: random.Random, max_clauses: int, min_clauses: int = 1) -> tuple[str, str]:
    """One (source, target) pair with a uniformly drawn number of clauses in [min, max]."""
    if not 1 <= min_clauses <= max_clauses:
        raise ValueError(f"need 1 <= min_clauses <= max_clauses, got {min_clauses}, {max_clauses}")
    n = rng.randint(min_clauses, max_clauses)
    clauses = [_clause(rng) for _ in range(n)]
    conjunctions = [rng.choice(sorted(CONJUNCTIONS)) for _ in range(n - 1)]
    src = _render(clauses, conjunctions, target=False)
    return src, translate_reference(src)


def _new_pairs(
    rng: random.Random, n: int, max_clauses: int, min_clauses: int, seen: set[str]
) -> list[tuple[str, str]]:
    """n pairs whose sources are not in `seen`; adds them to `seen`."""
    pairs: list[tuple[str, str]] = []
    attempts = 0
    while len(pairs) < n:
        src, tgt = generate_pair(rng, max_clauses, min_clauses)
        attempts += 1
        if src in seen:
            if attempts > 100 * n + 10_000:  # never at sensible sizes: the grammar is huge
                raise ValueError(f"cannot draw {n} distinct sentences with max_clauses={max_clauses}")
            continue
        seen.add(src)
        pairs.append((src, tgt))
    return pairs


def generate(n: int, seed: int, max_clauses: int = 2, min_clauses: int = 1) -> list[tuple[str, str]]:
    """n (source, target) pairs, deterministic for a seed, unique sources within the call.

    A longer call extends a shorter one with the same arguments (same prefix).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_clauses <= max_clauses:
        raise ValueError(f"need 1 <= min_clauses <= max_clauses, got {min_clauses}, {max_clauses}")
    return _new_pairs(random.Random(seed), n, max_clauses, min_clauses, set())


def splits(
    train: int, valid: int, test: int, seed: int, max_clauses: int, min_clauses: int = 1
) -> dict[str, list[tuple[str, str]]]:
    """train / valid / test lists; no source sentence appears in two of them."""
    for name, size in (("train", train), ("valid", valid), ("test", test)):
        if size < 0:
            raise ValueError(f"{name} size must be >= 0, got {size}")
    if not 1 <= min_clauses <= max_clauses:
        raise ValueError(f"need 1 <= min_clauses <= max_clauses, got {min_clauses}, {max_clauses}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out = {}
    for name, size in (("train", train), ("valid", valid), ("test", test)):
        out[name] = _new_pairs(rng, size, max_clauses, min_clauses, seen)
    return out
