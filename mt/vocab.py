"""SentencePiece subword vocabularies with fixed special ids (pad 0, unk 1, bos 2, eos 3)."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from mt import MTError
from mt.config import VocabConfig

#: the special ids every mt vocabulary has (SentencePiece is trained with them), models and batches use
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


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

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.Encode(list(texts), out_type=int, num_threads=min(4, os.cpu_count() or 1))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids if i > EOS_ID or i == UNK_ID])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.IdToPiece(int(i)) for i in ids]


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
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(lines),
            model_prefix=str(prefix),
            vocab_size=cfg.size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            hard_vocab_limit=False,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,
        )
        os.replace(f"{prefix}.model", model_file)
    return Vocab(model_file)

