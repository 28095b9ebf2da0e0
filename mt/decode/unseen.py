"""Source words the model could not read, copied into the translation (`decode.copy_unseen`).

A character the source vocabulary never saw reaches the model as byte pieces (`<0xE6>`, with byte
fallback) or as the unknown piece: the model cannot know what it means, and a model trained on
text without such pieces does not learn to copy them (docs/decoding.md, "Unseen characters"). Names, symbols
and words in another script are what such characters are made of, and what a translator keeps as
they are. So after the search, as OpenNMT's `-replace_unk` does for unknown words, the translation
is mended with the attention of its target words over the source words (mt.decode.align.word_attention,
teacher-forced on the hypothesis; a Transformer's decoder layer `decode.copy_layer`):

1. a target word holding the unknown piece `⁇` becomes the source word it attends to most;
2. each source word with a character the vocabulary lacks (after SentencePiece's normalisation),
   whose unseen characters are not in the output already, goes to the target word that attends
   to it most: it replaces that word when the word attends to it more than to any other source
   word (the word is the model's attempt at it), else it is inserted before that word (the model
   dropped it).

The unseen word's own column is used, not the target words' alignment: pieces the model never
trained on draw the attention of many target words, so that most of a sentence can be "aligned"
to them, while the word the model made of them attends to them most (measured: docs/decoding.md). Words are
whitespace-separated words; the copied text is the source line's own word, as written. Words of a
forced target prefix are never replaced, and nothing is inserted before them. Lines whose source
and output hold no byte or unknown piece (nearly all of them) are left alone and cost nothing.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from mt.decode.align import word_ids
from mt.data.placeholders import Protector
from mt.data.vocab import UNK_ID, Vocab


def copy_words(
    src_words: Sequence[str],
    tgt_words: Sequence[str],
    attention: Tensor,
    unseen: Sequence[int],
    unknown: Sequence[int] = (),
    keep: int = 0,
    unseen_chars: Sequence[set[str]] | None = None,
) -> tuple[list[str], list[int], list[tuple[int, int]]]:
    """Mend a translation's words (see the module's docstring). Returns the new words, the new
    index of each old target word, and the (source word, new target word) pair of each copy.

    attention: [target words, source words] (mt.decode.align.word_attention); unseen: the source words
    with unseen characters; unknown: the target words holding the unknown piece; keep: the first
    `keep` target words (a forced prefix) stay; unseen_chars: each unseen word's unseen characters
    (default: all of its characters)."""
    words = list(tgt_words)
    rows = [list(map(float, row)) for row in attention.tolist()]  # edited as words are replaced and inserted
    position = list(range(len(words)))  # new index of each old target word

    def best(row: list[float]) -> int | None:
        cols = [(v, -s) for s, v in enumerate(row) if v > 0]  # ties: the first source word
        return -max(cols)[1] if cols else None

    def one_hot(s: int) -> list[float]:
        return [1.0 if c == s else 0.0 for c in range(len(src_words))]

    copied: set[int] = set()
    for t in sorted(unknown):
        s = best(rows[t]) if t >= keep else None
        if s is not None:
            words[t], rows[t] = src_words[s], one_hot(s)
            copied.add(t)
    wanted: dict[str, int] = {}  # each unseen word: how often the source has it so far
    for k, s in enumerate(sorted(unseen)):
        chars = unseen_chars[k] if unseen_chars is not None else set(src_words[s])
        wanted[src_words[s]] = wanted.get(src_words[s], 0) + 1
        text = " ".join(words)
        if words.count(src_words[s]) >= wanted[src_words[s]] or (
                wanted[src_words[s]] == 1 and chars and all(c in text for c in chars)):
            continue  # the model kept it (or an earlier copy did)
        # the target word that attends most to the unseen word: what the model made of it when that
        # word attends to it more than to any other source word; else the model dropped it, and it
        # is inserted before that target word
        free = [t for t in range(keep, len(words)) if t not in copied]
        if not free:
            at = len(words)
        else:
            at = max(free, key=lambda t: (rows[t][s], -t))
            if best(rows[at]) == s:
                words[at], rows[at] = src_words[s], one_hot(s)
                copied.add(at)
                continue
        words.insert(at, src_words[s])
        rows.insert(at, one_hot(s))
        copied = {t + 1 if t >= at else t for t in copied} | {at}
        position = [p + 1 if p >= at else p for p in position]
    return words, position, sorted((best(rows[t]), t) for t in copied)


def unseen_characters(vocab: Vocab, text: str) -> set[str]:
    """The characters of `text` the vocabulary lacks, once normalised as SentencePiece does."""
    known = vocab.characters
    return {c for c in vocab.sp.Normalize(text) if c not in known and c != "\u2581"}


def placeholder_protector(src_vocab: Vocab, tgt_vocab: Vocab, patterns: Sequence[str] = ()) -> Protector | None:
    """What masks a pair of vocabularies' lines with placeholders (mt.data.placeholders): as many as both
    vocabularies have, a word unseen when the source vocabulary lacks one of its characters; None when
    either has none (a run trained without them)."""
    count = min(src_vocab.placeholders, tgt_vocab.placeholders)
    if not count:
        return None
    return Protector(lambda run: bool(unseen_characters(src_vocab, run)), patterns, limit=count)


class UnseenCopier:
    """copy_words for one pair of vocabularies: which lines need it, and the mended text."""

    def __init__(self, src_vocab: Vocab, tgt_vocab: Vocab) -> None:
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab

    def needed(self, src_ids: Sequence[int], tgt_ids: Sequence[int] = ()) -> bool:
        """Whether the source holds a byte or unknown piece, or the output the unknown piece."""
        unreadable = self.src_vocab.unreadable_ids
        return any(i in unreadable for i in src_ids) or UNK_ID in tgt_ids

    def mend(self, line: str, tgt_ids: Sequence[int], attention: Tensor, prefix_len: int = 0,
             unseen_words: bool = True, also: dict[int, str] | None = None,
             ) -> tuple[str, list[int], list[tuple[int, int]]] | None:
        """The translation (target ids, the first `prefix_len` of them forced) with the source's
        unseen words copied, or None when nothing changes; with the text, copy_words' new index of
        each old target word and its (source word, target word) copies. attention: [target words,
        the line's own words] (mt.decode.align.word_attention, source_word_ids). also: more source
        words to place, by index, with the text that stands for each (placeholders the output lacks);
        unseen_words=False: only those."""
        words = line.split()
        if not words or not tgt_ids:
            return None
        # the words holding a character the vocabulary lacks once normalised as SentencePiece does
        # (a word unknown to a word vocabulary, all of whose characters are known, is left to the
        # model and to rule 1)
        chars = [unseen_characters(self.src_vocab, word) if unseen_words else set() for word in words]
        for w, text in (also or {}).items():
            words[w], chars[w] = text, {text}  # placed as a whole: the output lacks it
        unseen = [w for w, c in enumerate(chars) if c]
        chars = [chars[w] for w in unseen]
        tgt_word_of = word_ids(self.tgt_vocab.pieces(tgt_ids))
        groups: list[list[int]] = [[] for _ in range(tgt_word_of[-1] + 1)]
        for i, w in zip(tgt_ids, tgt_word_of):
            groups[w].append(i)
        tgt_words = [self.tgt_vocab.decode(g).strip() for g in groups]
        unknown = [w for w, g in enumerate(groups) if UNK_ID in g] if unseen_words else []
        keep = tgt_word_of[prefix_len - 1] + 1 if prefix_len else 0
        if attention.shape != (len(tgt_words), len(words)) or not bool((attention > 0).any()):
            return None  # no attention to place them by (a pair too long to score)
        mended, position, copies = copy_words(words, tgt_words, attention, unseen, unknown, keep, chars)
        if not copies:
            return None
        return " ".join(mended), position, copies
