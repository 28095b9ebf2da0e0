"""Validation during training: the teacher-forced loss over the validation pairs the model has
positions for, and BLEU / chrF of the real search (decode.*) over every validation sentence."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mt.config import DecodeConfig
from mt.data.batching import TokenBatcher
from mt.decode.translator import Translator
from mt.train.data import TrainData
from mt.train.optim import label_smoothed_loss


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether score `new` beats `old` (None: nothing yet) on `metric` (loss: lower is better)."""
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


@torch.no_grad()
def validate(model: nn.Module, data: TrainData, decode: DecodeConfig, device: torch.device) -> dict[str, Any]:
    """The validation record of metrics.jsonl: loss, ppl, BLEU, chrF with their signatures."""
    from mt.metrics import score as score_metrics

    assert data.valid is not None and data.valid_batcher is not None
    was_training = model.training
    model.eval()
    nll = validation_loss(model, data.valid_batcher, device)
    src, refs = data.valid
    hyps = [tr.text for tr in translator(model, data, decode, device).translate(src)]
    scores = score_metrics(hyps, refs, metrics=("bleu", "chrf"))
    model.train(was_training)
    return {
        "loss": nll,
        "ppl": math.exp(min(nll, 50.0)),
        "bleu": scores["bleu"].score,
        "chrf": scores["chrf"].score,
        "bleu_signature": scores["bleu"].signature,
        "chrf_signature": scores["chrf"].signature,
        "sentences": len(src),
        "search": decode.search,
    }


def validation_loss(model: nn.Module, batcher: TokenBatcher, device: torch.device) -> float:
    """Mean cross-entropy per target token (no label smoothing) over `batcher`'s batches."""
    loss, tokens = 0.0, 0
    for indices in batcher.batches:
        batch = batcher.collate(indices).to(device)
        logits = model(batch.src, batch.src_lengths, batch.tgt_in)
        loss += float(label_smoothed_loss(logits, batch.tgt_out, 0.0))
        tokens += batch.ntokens
    return loss / max(tokens, 1)


def translator(model: nn.Module, data: TrainData, decode: DecodeConfig, device: torch.device) -> Translator:
    """The translator validation decodes with: the model being trained, the run's vocabularies, decode.*."""
    return Translator.for_model(model, data.src_vocab, data.tgt_vocab, decode, device, warn=lambda msg: None)
