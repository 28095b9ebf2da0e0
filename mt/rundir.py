"""The run directory `mt train` writes and the other commands read: the names of its files, where
they are, and the one check that a folder is a run.

    RUN/
      config.yaml            the recipe as run (all defaults filled in)
      spm.model              SentencePiece (or spm.src.model + spm.tgt.model)
      model.safetensors      best weights so far (what `mt translate` loads)
      meta.json              step, best score with its sacrebleu signature, vocab sizes
      metrics.jsonl          one JSON object per log line / validation
      checkpoints/step_00001000/{model.safetensors, trainer_state.pt, meta.json}
      checkpoints/latest     name of the newest complete checkpoint
      prepared/              the training corpora, prepared by the first start (mt/data/dataset.py), when
                             the recipe names no data.prepared directory
      averaged.safetensors   `mt average`'s output (by default)

Paths only, no torch: the command line checks a run directory before importing it. Writing and
loading the files is mt.checkpoint's (weights, trainer state) and mt.files' (atomic writes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mt import MTError

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"  # the best weights in RUN/, a checkpoint's own in a checkpoint folder
META = "meta.json"
METRICS = "metrics.jsonl"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # checkpoints/latest: the newest complete checkpoint's folder name
AVERAGED = "averaged.safetensors"
PREPARED = "prepared"  # RUN/prepared: the corpora prepared by `mt train` itself
JOINT_VOCAB, SRC_VOCAB, TGT_VOCAB = "spm.model", "spm.src.model", "spm.tgt.model"


def is_run_dir(path: str | Path) -> bool:
    """A run directory holds its config.yaml."""
    return (Path(path) / CONFIG).is_file()


def check_run_dir(path: str | Path) -> Path:
    """`path` as a Path if it is a run directory, else an MTError saying what it is instead."""
    path = Path(path)
    if not path.exists():
        raise MTError(f"{path}: no such run directory")
    if not is_run_dir(path):
        raise MTError(f"{path}: not a run directory (no {CONFIG}; train one with `mt train RECIPE.yaml`)")
    return path


def vocab_files(run_dir: Path, joint: bool) -> tuple[Path, Path]:
    """(source, target) SentencePiece model paths inside a run directory."""
    if joint:
        return run_dir / JOINT_VOCAB, run_dir / JOINT_VOCAB
    return run_dir / SRC_VOCAB, run_dir / TGT_VOCAB


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of `step` (eight digits: names sort as steps do)."""
    return f"step_{step:08d}"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / META).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (the one checkpoints/latest names, if it is complete)."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / META).is_file():
            return candidate
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def best_weights(run_dir: Path) -> Path:
    """The run's best validated weights: RUN/model.safetensors, or RUN/averaged.safetensors where
    train.average_last's average validated better (meta.json "best_weights" says which)."""
    run_dir = Path(run_dir)
    try:
        chosen = json.loads((run_dir / META).read_text(encoding="utf-8")).get("best_weights")
    except (OSError, ValueError, AttributeError):
        chosen = None
    if chosen == AVERAGED and (run_dir / AVERAGED).is_file():
        return run_dir / AVERAGED
    return run_dir / WEIGHTS


def weights_file(run_dir: Path, which: str = "best") -> Path:
    """The weights `mt translate --checkpoint` names: best (the best validated: best_weights, else
    the newest checkpoint's), last (the newest checkpoint's, else the best), a checkpoint folder or
    a file."""
    if which not in ("best", "last"):
        path = Path(which)
        if path.is_dir() and (path / WEIGHTS).is_file():  # a checkpoint folder, e.g. checkpoints/step_N
            return path / WEIGHTS
        return path
    best = best_weights(run_dir)
    last = latest_checkpoint(run_dir)
    if which == "best" and best.is_file():
        return best
    if last is not None:
        return last / WEIGHTS
    if best.is_file():
        return best
    raise MTError(f"{run_dir}: the run has no weights yet (no {WEIGHTS}, no checkpoints)")


def checkpoints_per_run(run_dirs: Sequence[str | Path], checkpoints: Sequence[str]) -> list[str]:
    """The checkpoint of each run from `--checkpoint`, given once for every run or once per run:
    best, last, or an existing .safetensors file or checkpoint folder. An MTError otherwise."""
    if len(checkpoints) not in (1, len(run_dirs)):
        raise MTError(f"give --checkpoint once (for every run) or once per run (-m): {len(run_dirs)} runs, "
                      f"{len(checkpoints)} checkpoints")
    for c in checkpoints:
        if c not in ("best", "last") and not Path(c).exists():
            raise MTError(f"{c}: no such checkpoint (use best, last, or a .safetensors file)")
    return list(checkpoints) * len(run_dirs) if len(checkpoints) == 1 else list(checkpoints)


def check_export_target(run_dir: Path, out: Path, force: bool) -> None:
    """Refuse an --out that exporting could not write or must not replace: the run directory or a
    folder holding it, an existing folder without --force, or (with --force) one that is not an
    exported model (no mt_export.json): --force replaces an earlier export, nothing else."""
    target, run = out.resolve(), run_dir.resolve()
    if target == run or target in run.parents:
        raise MTError(f"{out}: is the run directory {'itself' if target == run else 'or holds it'}; "
                      "export to a new directory")
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise MTError(f"{out}: already exists (use --force to replace it)")
    if not out.is_dir():
        raise MTError(f"{out}: exists and is not a directory")
    if not (out / "mt_export.json").is_file():
        raise MTError(f"{out}: exists and is not a model mt exported (no mt_export.json); --force only "
                      "replaces an earlier export: remove it yourself or choose another --out")
