"""Train a model from a YAML recipe and write a run directory (config, vocabulary, checkpoints, metrics). The training corpora are read from a directory written by `mt prepare` (data.prepared), or prepared into RUN_DIR/prepared on the first start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from mt import MTError
from mt.rundir import CHECKPOINTS, CONFIG, METRICS, WEIGHTS, check_run_dir

EPILOG = """\b
Examples:
  mt train recipes/demo.yaml
  mt train recipes/multi30k/transformer.yaml --run-dir runs/m30k --set train.max_steps=20000
  mt train --resume runs/m30k                      # continue a stopped or killed run exactly
  mt train --resume runs/m30k --set train.max_steps=40000
  mt prepare big.yaml --out data/big-prep && mt train big.yaml --set data.prepared=data/big-prep
  torchrun --nproc_per_node 4 -m mt.cli.main train recipes/multi30k/transformer.yaml   # several GPUs
"""

RESUMABLE = ("train.", "decode.")


def train(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe (see recipes/)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Run directory \\[default: runs/NAME]."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
) -> None:
    from mt.config import load_config, save_config  # light: checked before `import torch`

    if resume is not None:
        if recipe is not None:
            raise MTError("give either a RECIPE or --resume RUN, not both")
        check_run_dir(resume)
        bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(RESUMABLE)]
        if bad:
            raise MTError(f"--set {bad[0]}: only train.* and decode.* can change when resuming")
        cfg = load_config(resume / CONFIG, overrides)
        from mt.train.trainer import Trainer

        trainer = Trainer(cfg, resume, resume=True)  # checks the device before config.yaml changes
        if overrides:
            save_config(cfg, resume / CONFIG)
        trainer.train()
        return
    if recipe is None:
        raise MTError("missing RECIPE (a YAML file, e.g. recipes/demo.yaml) or --resume RUN")
    cfg = load_config(recipe, overrides)
    target = run_dir or Path("runs") / cfg.name
    if target.exists() and not target.is_dir():
        raise MTError(f"{target}: exists and is not a directory; choose another --run-dir")
    created = not target.exists()
    was_empty = target.is_dir() and not any(target.iterdir())
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 creates the folder
    if not (created or was_empty) and rank0:  # the trainer checks again; here the answer comes before `import torch`
        raise MTError(f"{target} already holds files; resume with `mt train --resume {target}` or choose another --run-dir")
    from mt.train.trainer import Trainer

    try:
        Trainer(cfg, target).train()
    except BaseException:  # bad input, a crash, Ctrl-C while reading data or training the vocabulary
        if (created or was_empty) and rank0:
            _forget_failed_start(target, created)
        raise


def _forget_failed_start(run_dir: Path, created: bool) -> None:
    """A run that failed before training started (missing corpus, bad line counts, an interrupt...)
    leaves nothing behind, so that the same command works once the input is fixed. A run that got
    as far as logging or saving is kept: `mt train --resume` continues it."""
    import shutil

    if not run_dir.is_dir() or any((run_dir / n).exists() for n in (CHECKPOINTS, WEIGHTS, METRICS)):
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():  # the folder was empty before: empty it again
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
