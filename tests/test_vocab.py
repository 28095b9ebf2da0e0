"""SentencePiece vocabularies: byte fallback for unseen characters, old vocabularies unchanged,
and the comparison that decides whether two runs can be ensembled."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt import MTError
from mt.config import VocabConfig
from mt.data.vocab import UNK_ID
from mt.data.synthetic import generate
from mt.data.vocab import Vocab, train_vocab

UNSEEN = "Москва 東京 😀 € café naïve Ħ"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return [s for pair in generate(300, seed=1) for s in pair]


def test_byte_fallback_round_trips_unseen_characters(lines: list[str], tmp_path: Path) -> None:
    vocab = train_vocab(lines, tmp_path / "spm.model", VocabConfig(size=400, model_type="bpe"))
    assert vocab.byte_fallback and VocabConfig().byte_fallback  # the default for new vocabularies
    text = f"the dog sees {UNSEEN}."
    ids = vocab.encode(text)
    assert UNK_ID not in ids
    pieces = vocab.pieces(ids)
    assert "<0xE6>" in pieces and "<0xF0>" in pieces  # 東 and 😀 as UTF-8 bytes
    assert vocab.decode(ids) == text
    # a byte sequence cut short is no character: the bytes of 東 without its last one become one
    # U+FFFD (replacement character) each, as SentencePiece decodes them
    cut = [vocab.sp.PieceToId("<0xE6>"), vocab.sp.PieceToId("<0x9D>")]
    assert vocab.decode(vocab.encode("the dog") + cut) == "the dog\ufffd\ufffd"
    # control characters only byte pieces can make: left out (a tab or line break becomes a space)
    byte = lambda b: vocab.sp.PieceToId(f"<0x{b:02X}>")  # noqa: E731
    assert vocab.decode(vocab.encode("the") + [byte(0x19), byte(0x09)] + vocab.encode("dog")) == "the  dog"


def test_without_byte_fallback_unseen_characters_are_unknown(lines: list[str], tmp_path: Path) -> None:
    vocab = train_vocab(lines, tmp_path / "spm.model", VocabConfig(size=400, model_type="bpe", byte_fallback=False))
    assert not vocab.byte_fallback
    ids = vocab.encode(f"the dog sees {UNSEEN}.")
    assert UNK_ID in ids
    assert "東" not in vocab.decode(ids) and "\u2047" in vocab.decode(ids)  # SentencePiece's ⁇


def test_a_vocabulary_too_small_for_the_byte_pieces_is_a_clear_error(lines: list[str], tmp_path: Path) -> None:
    with pytest.raises(MTError, match=r"vocab.size 200 is too small.*byte_fallback: false"):
        train_vocab(lines, tmp_path / "spm.model", VocabConfig(size=200))


def test_same_as_ignores_how_the_model_was_trained(lines: list[str], tmp_path: Path) -> None:
    """Two trainings on the same text compare equal (their trainer options name different temporary
    files); another size or another segmentation does not."""
    a = train_vocab(lines, tmp_path / "a" / "spm.model", VocabConfig(size=400))
    b = train_vocab(lines, tmp_path / "b" / "spm.model", VocabConfig(size=400))
    assert a.path.read_bytes() != b.path.read_bytes()
    assert a.same_as(b) and b.same_as(Vocab(a.path))
    assert not a.same_as(train_vocab(lines, tmp_path / "c" / "spm.model", VocabConfig(size=390)))
    assert not a.same_as(train_vocab(lines, tmp_path / "d" / "spm.model", VocabConfig(size=400, byte_fallback=False)))


def test_unreadable_ids_and_characters(lines: list[str], tmp_path: Path) -> None:
    """What the copy of unseen words (mt.decode.unseen) asks of a vocabulary, computed once per vocabulary."""
    vocab = train_vocab(lines, tmp_path / "spm.model", VocabConfig(size=400, model_type="bpe"))
    assert UNK_ID in vocab.unreadable_ids and len(vocab.unreadable_ids) == 257  # 256 byte pieces
    assert all(i in vocab.unreadable_ids for i in vocab.encode("Москва")[1:])
    assert set("abcdefghilmnoprstuvw.") <= vocab.characters and not set("М東😀\u2581") & vocab.characters
    assert vocab.characters is vocab.characters  # cached
