"""Average the weights of the last K checkpoints of a run (often +0.2-0.5 BLEU for Transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mt import MTError
from mt.rundir import AVERAGED, WEIGHTS, check_run_dir, checkpoint_dirs

EPILOG = """\b
Examples:
  mt average runs/m30k --last 5                  # writes runs/m30k/averaged.safetensors
  mt translate -m runs/m30k --checkpoint runs/m30k/averaged.safetensors < test.en
"""


def average(
    run: Path = typer.Argument(..., help="Run directory."),
    last: int = typer.Option(5, "--last", "-k", help="How many of the newest checkpoints to average."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file \\[default: RUN/averaged.safetensors]."),
) -> None:
    if last < 1:
        raise MTError(f"--last must be >= 1, got {last}")
    check_run_dir(run)
    if output is not None and output.is_dir():
        raise MTError(f"{output}: is a directory")

    from mt.checkpoint import write_average

    dirs = checkpoint_dirs(run)
    if not dirs:
        raise MTError(f"{run}: no checkpoints to average")
    chosen = dirs[-last:]
    if len(chosen) < last:
        typer.echo(f"mt: warning: only {len(chosen)} checkpoints kept (train.keep_last); averaging those", err=True)
    out = output or run / AVERAGED
    write_average([d / WEIGHTS for d in chosen], out)
    typer.echo(f"averaged {len(chosen)} checkpoints ({chosen[0].name} .. {chosen[-1].name}) -> {out}")
