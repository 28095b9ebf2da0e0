"""Export a trained Transformer run to another inference engine (CTranslate2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from mt import MTError
from mt.cli.options import CHECKPOINT_HELP
from mt.rundir import check_run_dir

EPILOG = """\b
Examples:
  mt export -m runs/m30k --format ctranslate2 --out runs/m30k-ct2
  mt export -m runs/m30k --format ctranslate2 --out runs/m30k-ct2-int8 --quantization int8
  mt export -m runs/m30k --format huggingface --out runs/m30k-hf   # pip install 'mt\\[hf]'
\b
Then, with the usual CTranslate2 code (pip install 'mt\\[ctranslate2]'):
  python -c "import ctranslate2, sentencepiece as spm
  sp = spm.SentencePieceProcessor('runs/m30k-ct2/spm.model')
  tr = ctranslate2.Translator('runs/m30k-ct2', compute_type='int8')
  out = tr.translate_batch(\\[sp.encode('A dog runs.', out_type=str)], beam_size=5)
  print(sp.decode(out[0].hypotheses[0]))"
"""

FORMATS = ("ctranslate2", "huggingface")


def export(
    model: Path = typer.Option(..., "--model", "-m", help="Run directory written by `mt train` (a Transformer)."),
    format: str = typer.Option(..., "--format", "-f", help="Target format: ctranslate2, or huggingface (a Transformer as a model for transformers: Marian for post-norm runs, Pegasus for pre-norm)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to create (it must not exist, unless --force)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", "-q", help="Weight type of the exported model: int8, int8_float32, int8_float16, int8_bfloat16, int16, float16, bfloat16 or float32 \\[default: float32; CTranslate2 can still convert at load time with compute_type]."),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP + "."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is an earlier export (holds mt_export.json); never the run directory or a folder holding it."),
) -> None:
    if format not in FORMATS:
        raise MTError(f"unknown export format {format!r} (supported: {', '.join(FORMATS)})")
    check_run_dir(model)
    if out.exists() and not force:
        raise MTError(f"{out}: already exists (use --force to replace it)")
    if checkpoint not in ("best", "last") and not Path(checkpoint).exists():
        raise MTError(f"{checkpoint}: no such checkpoint (use best, last, or a .safetensors file)")
    if format == "huggingface":
        if quantization is not None:
            raise MTError("--quantization is for --format ctranslate2; a Hugging Face export keeps float32 weights")
        from mt.interop.huggingface import export_huggingface

        written = export_huggingface(model, out, checkpoint, force)
        print(f"mt export: wrote {written} (Hugging Face transformers, MarianMTModel with MarianTokenizer)",
              file=sys.stderr)
        return
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise MTError("exporting to CTranslate2 needs the ctranslate2 package: pip install 'mt[ctranslate2]'") from None

    from mt.interop.ctranslate2 import export_ctranslate2

    written = export_ctranslate2(model, out, checkpoint, quantization, force)
    info = json.loads((written / "mt_export.json").read_text(encoding="utf-8"))
    for note in info["notes"]:
        print(f"mt: note: {note}", file=sys.stderr)
    options = ", ".join(f"{k}={v}" for k, v in info["translate_batch"].items())
    print(f"mt export: wrote {written} (CTranslate2, {info['quantization']} weights); the run's decoding "
          f"options for translate_batch: {options}", file=sys.stderr)
