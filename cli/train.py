"""Train a model from a YAML recipe and write a run directory (config, vocabulary, checkpoints, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mt import MTError

EPILOG = """\b
Examples:
  mt train recipes/demo.yaml
  mt train recipes/multi30k/transformer.yaml --run-dir runs/m30k --set train.max_steps=20000
  mt train --resume runs/m30k                      # continue a stopped or killed run exactly
  mt train --resume runs/m30k --set train.max_steps=40000
  torchrun --nproc_per_node 4 -m mt.cli.main train recipes/multi30k/transformer.yaml   # several GPUs
"""

RESUMABLE = ("train.", "decode.")


def train(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe (see recipes/)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Run directory [default: runs/NAME]."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
) -> None:
    from mt.checkpoint import is_run_dir
    from mt.config import load_config, save_config
    from mt.train import train as run_training

    if resume is not None:
        if recipe is not None:
            raise MTError("give either a RECIPE or --resume RUN, not both")
        if not is_run_dir(resume):
            raise MTError(f"{resume}: not a run directory (no config.yaml)")
        bad = [o for o in overrides if not o.split("=", 1)[0].startswith(RESUMABLE)]
        if bad:
            raise MTError(f"--set {bad[0]}: only train.* and decode.* can change when resuming")
        cfg = load_config(resume / "config.yaml", overrides)
        if overrides:
            save_config(cfg, resume / "config.yaml")
        run_training(cfg, resume, resume=True)
        return
    if recipe is None:
        raise MTError("missing RECIPE (a YAML file, e.g. recipes/demo.yaml) or --resume RUN")
    cfg = load_config(recipe, overrides)
    run_training(cfg, run_dir or Path("runs") / cfg.name)
