"""Placeholders: spans that must pass through a translation unchanged.

URLs, e-mail addresses, numbers, words written in characters the vocabulary lacks (a name in another
script, an emoji) and the user's own patterns are replaced by indexed placeholder pieces before the
search and put back after it, by index::

    near 東京 station, call 030 1234.   ->   near ⦅0⦆ station, call ⦅1⦆ ⦅2⦆.

The placeholders are ordinary vocabulary pieces (SentencePiece user-defined symbols, `vocab.placeholders`)
that training teaches: in a training pair, spans that stand identically in the source and the target
(numbers, names, URLs) are replaced on both sides by the same placeholder with a probability
(`data.placeholder_prob`), so the model learns to carry them across, as Marian's and ModernMT's tags are
taught. Spans with the same text share one placeholder.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mt import MTError

OPEN, CLOSE = "\u2985", "\u2986"  # ⦅ ⦆: NFKC-stable, so SentencePiece's normalisation keeps them

#: a placeholder piece as the model sees it: ⦅0⦆, ⦅1⦆, ...
PLACEHOLDER = re.compile(OPEN + r"(\d+)" + CLOSE)

#: the kinds of span, in the order they win where two overlap
KINDS = ("url", "email", "pattern", "number", "unseen")

_URL = re.compile(r"(?<![\w@])(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.)[^\s<>\"'`]+")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMBER = re.compile(r"(?<![\w.,:/-])\d+(?:[.,:/-]\d+)*(?!\w)")
_TRAILING = ".,;:!?)]}'\""  # punctuation that ends a sentence or clause after a URL, not the URL
_CAPITALISED = re.compile(r"(?<!\w)[^\W\d_][\w'’-]*")


def _wordlike(c: str) -> bool:
    """A letter, digit or mark (the vowel signs of Devanagari, combining accents): part of a word."""
    return c.isalnum() or c == "_" or unicodedata.category(c)[0] == "M"


_JOINERS = "-'\u2019"  # a hyphen or apostrophe between two word characters keeps them one word


def _word_parts(line: str) -> list[tuple[int, int, bool]]:
    """(start, end, wordlike) of the line's runs of word characters (Санкт-Петербург, O'Brien: one
    run) and of other non-space characters."""
    parts: list[tuple[int, int, bool]] = []
    for i, c in enumerate(line):
        joins = c in _JOINERS and 0 < i < len(line) - 1 and _wordlike(line[i - 1]) and _wordlike(line[i + 1])
        kind = None if c.isspace() else joins or _wordlike(c)
        if kind is not None and parts and parts[-1][1] == i and parts[-1][2] == kind:
            parts[-1] = (parts[-1][0], i + 1, kind)
        elif kind is not None:
            parts.append((i, i + 1, kind))
    return parts


def placeholder(index: int) -> str:
    return f"{OPEN}{index}{CLOSE}"


def symbols(count: int) -> list[str]:
    """The vocabulary's placeholder pieces (SentencePiece user-defined symbols)."""
    return [placeholder(i) for i in range(count)]


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str

    def text(self, line: str) -> str:
        return line[self.start:self.end]


@dataclass(frozen=True)
class Masked:
    """A line with its spans replaced: `text` is what the model reads, `values[k]` what ⦅k⦆ stands for,
    `counts[k]` how often it stands in the line."""

    text: str
    values: tuple[str, ...]
    counts: tuple[int, ...]

    def restore(self, output: str) -> "Restored":
        return restore(output, self.values, self.counts)


@dataclass(frozen=True)
class Restored:
    text: str
    #: indices of placeholders the output did not contain (their values are not in `text`)
    missing: tuple[int, ...]
    #: placeholders the output had beyond the source's count, or that the source did not have (removed)
    dropped: int
    #: each whitespace-separated word of the output: the index of its (first) word in `text`, None
    #: for a word that was only a removed placeholder
    words: list[int | None] = field(default_factory=list)


def _strip_trailing(text: str, start: int, end: int) -> int:
    """The end of a URL without the punctuation after it (an opening bracket inside keeps its closer)."""
    while end > start and text[end - 1] in _TRAILING:
        closer = text[end - 1]
        opener = {")": "(", "]": "[", "}": "{"}.get(closer)
        if opener and text.count(opener, start, end) >= text.count(closer, start, end):
            break
        end -= 1
    return end


class Protector:
    """Finds the spans of a line that must pass through unchanged.

    is_unseen(run) tells whether a run of letters (or of symbols) holds a character the vocabulary lacks
    (after its normalisation); None: no such check. patterns: the user's regular expressions."""

    def __init__(self, is_unseen: Callable[[str], bool] | None = None, patterns: Sequence[str] = (),
                 kinds: Sequence[str] = KINDS, limit: int = 8) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise MTError(f"unknown kind of protected span {unknown[0]!r} (known: {', '.join(KINDS)})")
        self.kinds = tuple(k for k in KINDS if k in kinds)
        self.limit = limit  # placeholders a line may use (the vocabulary's)
        self.is_unseen = is_unseen
        self.patterns = []
        for p in patterns:
            try:
                self.patterns.append(re.compile(p))
            except re.error as e:
                raise MTError(f"decode.protect: {p!r} is not a regular expression ({e})") from None

    def spans(self, line: str) -> list[Span]:
        """Non-overlapping spans, left to right; where two overlap, the earlier kind in KINDS wins."""
        # a literal placeholder in the input is text like any other: it is protected as a span of its own
        taken = [Span(m.start(), m.end(), "pattern") for m in PLACEHOLDER.finditer(line)]
        for kind in self.kinds:
            for span in self._find(kind, line):
                if span.end > span.start and not any(span.start < t.end and t.start < span.end for t in taken):
                    taken.append(span)
        return sorted(taken, key=lambda s: s.start)

    def _find(self, kind: str, line: str):
        if kind == "url":
            for m in _URL.finditer(line):
                yield Span(m.start(), _strip_trailing(line, m.start(), m.end()), kind)
        elif kind == "email":
            for m in _EMAIL.finditer(line):
                yield Span(m.start(), m.end() - (line[m.end() - 1] == "."), kind)
        elif kind == "pattern":
            for p in self.patterns:
                yield from (Span(m.start(), m.end(), kind) for m in p.finditer(line))
        elif kind == "number":
            yield from (Span(m.start(), m.end(), kind) for m in _NUMBER.finditer(line))
        elif self.is_unseen is not None:
            yield from self._unseen(line)

    def _unseen(self, line: str):
        """A word (a run of letters, digits and marks) with a character the vocabulary lacks, whole; among
        symbols and punctuation, just the run of characters it lacks (the emoji, not the '!' after it)."""
        for start, end, wordlike in _word_parts(line):
            if wordlike:
                if self.is_unseen(line[start:end]):
                    yield Span(start, end, "unseen")
                continue
            first = None  # among symbols: each run of unseen ones
            for i in range(start, end + 1):
                unseen = i < end and self.is_unseen(line[i])
                if unseen and first is None:
                    first = i
                elif not unseen and first is not None:
                    yield Span(first, i, "unseen")
                    first = None

    def mask(self, line: str, limit: int | None = None) -> Masked:
        """Replace up to `limit` (default: the protector's) distinct span texts by ⦅0⦆, ⦅1⦆, ... in order
        of first appearance; spans beyond the limit stay as text."""
        limit = self.limit if limit is None else limit
        values: list[str] = []
        counts: list[int] = []
        out, pos = [], 0
        for span in self.spans(line):
            value = span.text(line)
            if value in values:
                index = values.index(value)
            elif len(values) < limit:
                index = len(values)
                values.append(value)
                counts.append(0)
            else:
                continue
            counts[index] += 1
            out += [line[pos:span.start], placeholder(index)]
            pos = span.end
        out.append(line[pos:])
        return Masked("".join(out), tuple(values), tuple(counts))


def restore(output: str, values: Sequence[str], counts: Sequence[int] | None = None) -> Restored:
    """Put the values back for ⦅k⦆ in a model's output: each at most as often as the source had it
    (counts; default once); extra or unknown placeholders are removed (a word that was only one goes
    with its space). Restored.words maps each word of the output to its first word in the text."""
    counts = list(counts) if counts is not None else [1] * len(values)
    used = [0] * len(values)
    dropped = 0

    def put(m: re.Match) -> str:
        nonlocal dropped
        k = int(m.group(1))
        if k < len(values) and used[k] < counts[k]:
            used[k] += 1
            return values[k]
        dropped += 1
        return ""

    if PLACEHOLDER.search(output) is None:
        words = list(range(len(output.split())))
        return Restored(output, tuple(range(len(values))), 0, words)
    out: list[str] = []
    words: list[int | None] = []
    for word in output.split():
        new = PLACEHOLDER.sub(put, word)
        words.append(len(out) if new else None)
        out.extend(new.split())
    return Restored(" ".join(out), tuple(k for k in range(len(values)) if used[k] == 0), dropped, words)


def source_words(masked: Masked) -> list[int]:
    """Each word of the masked line: the index of its first word in the line as written (a value
    with spaces in it, from a user's pattern, is several words there)."""
    out, extra = [], 0
    for word in masked.text.split():
        out.append(len(out) + extra)
        extra += sum(len(masked.values[int(k)].split()) - 1 for k in PLACEHOLDER.findall(word)
                     if int(k) < len(masked.values))
    return out


def mask_like(text: str, masked: Masked) -> str:
    """`text` (a target prefix) with the masked line's values, where they stand there whole, replaced by
    the same placeholders."""
    return _replace(text, masked.values, range(len(masked.values))) if masked.values else text


def insert(text: str, value: str, word_index: int) -> str:
    """`value` put before the word at word_index of `text` (after the last word when past the end): where
    a dropped placeholder's value goes when the alignment says which target word stands for it."""
    words = text.split(" ") if text else []
    words.insert(min(max(word_index, 0), len(words)), value)
    return " ".join(words)


# ----------------------------------------------------------------------------------------------
# training: the same placeholder on both sides of a pair


def _whole(text: str, value: str) -> list[int]:
    """Where `value` stands in `text` as a whole (not inside a longer word or number)."""
    found, start = [], text.find(value)
    while start >= 0:
        end = start + len(value)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (_wordlike(before) or _wordlike(after)):
            found.append(start)
        start = text.find(value, start + 1)
    return found


def shared_spans(src: str, tgt: str, protector: Protector, names: bool = True) -> list[str]:
    """The span texts of `src` that stand identically, as a whole, in `tgt`: its protected spans, and
    with `names` its capitalised words (names mostly: a capitalised word that stands as it is in the
    other language), longest first."""
    found = [s.text(src) for s in protector.spans(src)]
    if names:
        found += [m.group() for m in _CAPITALISED.finditer(src) if m.group()[0].isupper()]
    shared = []
    for value in dict.fromkeys(found):
        if _whole(tgt, value) and not any(value in longer for longer in shared):
            shared.append(value)
    return sorted(shared, key=len, reverse=True)


def mask_pair(src: str, tgt: str, protector: Protector, count: int, prob: float,
              rng: random.Random) -> tuple[str, str]:
    """A training pair with each shared span replaced on both sides, with probability `prob`, by the same
    placeholder. The indices are drawn at random from the `count` placeholders, so that every one of them
    is trained (a line at decoding time numbers its spans from 0)."""
    chosen = [v for v in shared_spans(src, tgt, protector) if rng.random() < prob][:count]
    if not chosen:
        return src, tgt
    indices = rng.sample(range(count), len(chosen))
    return _replace(src, chosen, indices), _replace(tgt, chosen, indices)


def _replace(text: str, values: Sequence[str], indices: Sequence[int]) -> str:
    """Every whole occurrence of each value (longest first where two overlap) by its placeholder, in one
    pass over the text (a placeholder's own digits are never taken for a number)."""
    taken: list[tuple[int, int, int]] = []
    for value, index in sorted(zip(values, indices), key=lambda vi: -len(vi[0])):
        for start in _whole(text, value):
            end = start + len(value)
            if not any(start < e and s < end for s, e, _ in taken):
                taken.append((start, end, index))
    out, pos = [], 0
    for start, end, index in sorted(taken):
        out += [text[pos:start], placeholder(index)]
        pos = end
    return "".join(out) + text[pos:]
