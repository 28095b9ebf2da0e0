"""Model builder: one plain if/elif over the recipe's `model.arch`."""

from __future__ import annotations

from mt.config import ModelConfig, RNNConfig, TransformerConfig
from mt.models.base import Seq2Seq


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    if isinstance(cfg, TransformerConfig):
        from mt.models.transformer import Transformer

        return Transformer(cfg, src_vocab_size, tgt_vocab_size)
    if isinstance(cfg, RNNConfig):
        from mt.models.rnn import RNNSeq2Seq

        return RNNSeq2Seq(cfg, src_vocab_size, tgt_vocab_size)
    raise TypeError(f"unknown model config {type(cfg).__name__}")
