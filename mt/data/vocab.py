"""SentencePiece subword vocabularies with fixed special ids (pad 0, unk 1, bos 2, eos 3)."""

from __future__ import annotations

import os
import random
import re
import struct
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from mt import MTError
from mt.config import VocabConfig
from mt.data.placeholders import placeholder, symbols

#: the special ids every mt vocabulary has (SentencePiece is trained with them), models and batches use
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _control_replacement(match: re.Match) -> str:
    return " " if match.group() in "\t\n\r" else ""


class Vocab:
    """A loaded SentencePiece model."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise MTError(f"{path}: no such SentencePiece model")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError):
            raise MTError(f"{path}: not a SentencePiece model") from None
        if self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID or self.sp.bos_id() != BOS_ID:
            raise MTError(f"{path}: SentencePiece model with other special ids (need pad=0 unk=1 bos=2 eos=3)")

    def __len__(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def byte_fallback(self) -> bool:
        """Whether unseen characters become byte pieces (<0x..>) rather than the unknown piece."""
        return any(self.sp.IsByte(i) for i in range(len(self)))

    @cached_property
    def unreadable_ids(self) -> frozenset[int]:
        """The ids that carry no character the model was trained on: the byte pieces and the unknown
        piece (what a character outside the vocabulary becomes)."""
        return frozenset(i for i in range(len(self)) if self.sp.IsByte(i)) | {UNK_ID}

    @cached_property
    def placeholders(self) -> int:
        """How many placeholder pieces ⦅0⦆, ⦅1⦆, ... the vocabulary has (vocab.placeholders; 0 for
        vocabularies trained without them)."""
        n = 0
        while self.sp.PieceToId(placeholder(n)) != self.sp.unk_id():
            n += 1
        return n

    @cached_property
    def characters(self) -> frozenset[str]:
        """The characters of the vocabulary's ordinary pieces (not '▁', byte, control or unknown pieces)."""
        sp, chars = self.sp, set()
        for i in range(len(self)):
            if not (sp.IsByte(i) or sp.IsControl(i) or sp.IsUnknown(i)):
                chars.update(sp.IdToPiece(i).replace("\u2581", ""))
        return frozenset(chars)

    def same_as(self, other: "Vocab") -> bool:
        """The same segmentation and ids: equal pieces, scores, types and normalisation rules. Two
        models trained alike compare equal although their training options (a temporary file name)
        differ."""
        return self is other or _without_trainer_spec(self.sp.serialized_model_proto()) == _without_trainer_spec(
            other.sp.serialized_model_proto())

    @cached_property
    def language_codes(self) -> dict[str, int]:
        """Marian's target-language tokens (>>fra<<, ...) that the vocabulary holds as pieces of
        their own, {piece: id}: an imported multilingual OPUS-MT model, whose source starts with the
        code of the language to translate into. Empty for the vocabularies mt trains."""
        sp = self.sp
        return {piece: i for i in range(len(self))
                if len(piece := sp.IdToPiece(i)) > 4 and piece.startswith(">>") and piece.endswith("<<")}

    def split_code(self, text: str) -> tuple[list[int], str]:
        """A leading language code split off as MarianTokenizer does it (`>>fra<< text`): its id (the
        unknown piece's for a code the vocabulary lacks) and the rest of the text; ([], text) for a
        vocabulary without codes."""
        if self.language_codes and text.startswith(">>") and (end := text.find("<<")) != -1:
            return [self.language_codes.get(text[: end + 2], UNK_ID)], text[end + 2:]
        return [], text

    def encode(self, text: str) -> list[int]:
        code, text = self.split_code(text)
        return code + self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], threads: int | None = None) -> list[list[int]]:
        threads = threads or min(4, os.cpu_count() or 1)
        if not self.language_codes:
            return self.sp.Encode(list(texts), out_type=int, num_threads=threads)
        split = [self.split_code(t) for t in texts]
        ids = self.sp.Encode([t for _, t in split], out_type=int, num_threads=threads)
        return [code + i for (code, _), i in zip(split, ids)]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text; byte pieces that form a UTF-8 character become it (one U+FFFD per byte
        of a broken sequence). Control characters, which only byte pieces can produce and no
        training text holds after SentencePiece's normalisation, are left out (a tab or a line
        break would also break the line- and TAB-based output formats)."""
        text = self.sp.DecodeIds([int(i) for i in ids if i > EOS_ID or i == UNK_ID])
        return _CONTROL.sub(_control_replacement, text) if _CONTROL.search(text) else text

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.IdToPiece(int(i)) for i in ids]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _without_trainer_spec(proto: bytes) -> bytes:
    """A serialised SentencePiece ModelProto without field 2 (TrainerSpec: how it was trained, not
    how it segments). The protobuf wire format is read directly: the protobuf package is not a
    dependency."""
    out, pos = bytearray(), 0
    while pos < len(proto):
        start = pos
        key, pos = _varint(proto, pos)
        kind = key & 7
        if kind == 2:  # length-delimited: pieces (1), trainer_spec (2), normalizer specs (3, 5)
            size, pos = _varint(proto, pos)
            pos += size
        elif kind == 0:
            pos = _varint(proto, pos)[1]
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        else:
            raise MTError("not a SentencePiece model (unexpected protobuf field)")
        if key >> 3 != 2:
            out += proto[start:pos]
    return bytes(out)


def train_vocab(sentences: Iterable[str], model_file: Path, cfg: VocabConfig, seed: int = 1) -> Vocab:
    """Train a SentencePiece model on `sentences` and write it atomically to `model_file`."""
    lines = [s for s in sentences if s.strip()]
    if not lines:
        raise MTError("cannot train a vocabulary: the training text is empty")
    if len(lines) > cfg.max_sentences:
        lines = random.Random(seed).sample(lines, cfg.max_sentences)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_file.parent, prefix=".spm-") as tmp:
        prefix = Path(tmp) / "spm"
        try:
            _train(lines, prefix, cfg)
        except RuntimeError as e:
            need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
            if need:
                fallback = "the 256 byte pieces (vocab.byte_fallback), " if cfg.byte_fallback else ""
                raise MTError(
                    f"vocab.size {cfg.size} is too small: {fallback}the characters of the training text"
                    + (f", {cfg.placeholders} placeholders (vocab.placeholders)" if cfg.placeholders else "")
                    + f" and 4 special pieces need {need.group(1)}; raise vocab.size"
                    + (" or set vocab.byte_fallback: false" if cfg.byte_fallback else "")
                ) from None
            raise MTError(f"SentencePiece training failed: {str(e).splitlines()[0]}") from None
        os.replace(f"{prefix}.model", model_file)
    return Vocab(model_file)


def _train(lines: list[str], prefix: Path, cfg: VocabConfig) -> None:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=cfg.size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        num_threads=min(4, os.cpu_count() or 1),
        minloglevel=2,
        # placeholders (mt.data.placeholders) are pieces of their own in any context
        user_defined_symbols=symbols(cfg.placeholders),
    )



# ----------------------------------------------------------------------------------------------
# a SentencePiece model re-numbered by an id table (models imported from Hugging Face)

#: SentencePiece piece types (sentencepiece_model.proto)
_TYPE_NORMAL, _TYPE_UNKNOWN, _TYPE_CONTROL, _TYPE_UNUSED = 1, 2, 3, 5
#: the pieces mt's special ids carry, in id order (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")


def _key(field: int, kind: int) -> bytes:
    return _encode_varint(field << 3 | kind)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(message: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a serialised protobuf message: a varint as int, every
    other value as its raw bytes (length-delimited ones without their length)."""
    fields, pos = [], 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        kind = key & 7
        if kind == 0:
            value, pos = _varint(message, pos)
        elif kind == 2:
            size, pos = _varint(message, pos)
            value, pos = message[pos:pos + size], pos + size
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            value, pos = message[pos:pos + size], pos + size
        else:
            raise MTError("not a SentencePiece model (unexpected protobuf field)")
        fields.append((key >> 3, kind, value))
    return fields


def _piece_message(piece: str, score: bytes, kind: int) -> bytes:
    text = piece.encode("utf-8")
    body = _key(1, 2) + _encode_varint(len(text)) + text + _key(2, 5) + score + _key(3, 0) + _encode_varint(kind)
    return _key(1, 2) + _encode_varint(len(body)) + body


def spm_pieces(proto: bytes) -> dict[str, tuple[bytes, int]]:
    """piece -> (score as 4 little-endian float bytes, type) of a serialised SentencePiece model."""
    pieces = {}
    for field, _, value in _fields(proto):
        if field == 1:
            parts = {f: v for f, _, v in _fields(value)}
            pieces[parts[1].decode("utf-8")] = (parts.get(2, b"\0\0\0\0"), parts.get(3, _TYPE_NORMAL))
    return pieces


def spm_trainer_option(proto: bytes, field: int, default: int) -> int:
    """A varint field of the model's TrainerSpec (3: model type, 35: byte fallback)."""
    for number, _, value in _fields(proto):
        if number == 2:
            found = [v for f, kind, v in _fields(value) if f == field and kind == 0]
            return found[-1] if found else default
    return default


def spm_with_id_table(proto: bytes, table: Sequence[str]) -> bytes:
    """The SentencePiece model `proto` renumbered so that piece table[i] has id i: the model's own
    pieces keep their scores and types; the table's other pieces (those of the other language in a
    table shared by two models) become UNUSED, which segmentation never produces; table[:4] are
    mt's special pieces. The segmentation is the model's own, and its ids are the table's. Every
    piece of the model must be in the table (the caller adds those it lacks). The self-test data
    (expected ids of the old numbering) is dropped; the TrainerSpec gets mt's special ids."""
    own, low = spm_pieces(proto), struct.pack("<f", -1e9)  # unused pieces merge last in BPE, then split back
    kinds = [_TYPE_UNKNOWN if i == UNK_ID else _TYPE_CONTROL for i in range(4)]
    out = bytearray()
    for i, piece in enumerate(table):
        if i < 4:
            out += _piece_message(piece, b"\0\0\0\0", kinds[i])
        elif piece in own and own[piece][1] not in (_TYPE_UNKNOWN, _TYPE_CONTROL):
            out += _piece_message(piece, *own[piece])
        else:
            out += _piece_message(piece, low, _TYPE_UNUSED)
    specials = b"".join(_key(field, 0) + _encode_varint(i) for field, i in ((40, UNK_ID), (41, BOS_ID), (42, EOS_ID),
                                                                            (43, PAD_ID)))
    for field, piece in zip((48, 45, 46, 47), table[:4]):  # pad, unk, bos, eos piece names
        text = piece.encode("utf-8")
        specials += _key(field, 2) + _encode_varint(len(text)) + text
    for field, kind, value in _fields(proto):
        if field == 2:  # TrainerSpec: later fields override earlier ones
            value = value + specials
        if field in (1, 4):
            continue
        out += _key(field, kind) + (_encode_varint(value) if kind == 0 else
                                    (_encode_varint(len(value)) + value if kind == 2 else value))
    return bytes(out)
