"""Loading runs for decoding: one place for every caller (mt translate, mt score, mt serve, benchmarks).

    loaded = load_for_decoding(["runs/a", "runs/b"], device="cpu", threads=4, int8=True)  # an ensemble
    translator = loaded.translator(decode)        # its search built from a DecodeConfig

`load_for_decoding` resolves the device (int8 decodes on the CPU), sets torch's CPU threads, loads
one run or several as an ensemble (checkpoint per run, mixture weights), quantises to int8 or casts
to a dtype (mt.device), and gives a `LoadedRun`. Its `translator(decode)` builds the Translator, as
`Translator.for_model` does for a model already in memory (a benchmark's, the trainer's validation).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from mt import MTError
from mt.config import DecodeConfig
from mt.decode.ensemble import load_models
from mt.decode.quantize import quantize_int8
from mt.decode.translator import Run, Translator
from mt.device import resolve_device, set_decoding_dtype


@dataclass
class LoadedRun:
    """A run (or an ensemble of runs) loaded for decoding: on `device`, in `precision` (float32, int8,
    bfloat16, float16)."""

    run: Run
    device: torch.device
    precision: str = "float32"

    def translator(self, decode: DecodeConfig, **options) -> Translator:
        """A Translator of this run decoding as `decode` says (Translator.for_model's options)."""
        return Translator.for_model(self.run.model, self.run.src_vocab, self.run.tgt_vocab, decode, self.device,
                                    **options)


def _warn(message: str) -> None:
    print(f"mt: warning: {message}", file=sys.stderr)


def load_for_decoding(runs: Sequence[str | Path], *, checkpoints: Sequence[str] = ("best",),
                      weights: Sequence[float] | None = None, device: str = "auto", threads: int | None = None,
                      int8: bool = False, dtype: str = "float32", attention_for: str | None = None,
                      warn: Callable[[str], None] = _warn) -> LoadedRun:
    """Load run directories for decoding; several are an ensemble (their log mean probability,
    mixed by `weights`; mt.decode.ensemble). checkpoints: best, last or a .safetensors file, once for
    all runs or once per run. int8: int8 Linear/GRU/LSTM layers on the CPU (mt.decode.quantize);
    dtype: float32, bfloat16 or float16 weights (mt.device.set_decoding_dtype, which `warn`s when this
    CPU has no native bf16). attention_for: the option that needs the model's attention (--alignments):
    an MTError naming it when the model has none."""
    dev = resolve_device("cpu" if int8 else device)  # before loading anything: no GPU fails at once
    if threads:
        torch.set_num_threads(threads)
    run = load_models(runs, dev, checkpoints, weights)
    if attention_for is not None and not run.model.has_attention:
        raise MTError(f"{attention_for}: the model has no attention (an RNN with model.attention: none)")
    if int8:
        quantize_int8(run.model)
    if dtype != "float32":
        set_decoding_dtype(run.model, dtype, dev, warn=warn)
    return LoadedRun(run, dev, "int8" if int8 else dtype)
