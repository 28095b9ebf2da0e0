"""Import a pretrained model as an mt run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

EPILOG = """\b
Examples:
  mt import huggingface ./opus-mt-en-de --out runs/opus-en-de     # a folder saved by transformers
  mt import huggingface Helsinki-NLP/opus-mt-en-de --out runs/opus-en-de   # fetched (online; mt[hf])
  echo "A dog runs." | mt translate -m runs/opus-en-de
"""

app = typer.Typer(no_args_is_help=True, help=__doc__)


@app.command("huggingface", epilog=EPILOG)
def huggingface(
    source: str = typer.Argument(..., help="A Marian model folder saved by transformers (config.json, "
                                 "model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json), "
                                 "or a model id fetched with huggingface_hub."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create (it must not exist)."),
) -> None:
    """A Marian (OPUS-MT) model in the Hugging Face transformers format as an mt run: translate, score,
    serve, export or fine-tune it (train.init_from) like a run `mt train` wrote."""
    from mt.interop.huggingface import import_huggingface

    import_huggingface(source, out, log=lambda msg: print(f"mt import: {msg}", file=sys.stderr))
    print(f"mt import: wrote {out}", file=sys.stderr)
