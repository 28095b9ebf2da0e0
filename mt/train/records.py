"""The records a run keeps in its directory (mt.rundir names the files): config.yaml, meta.json
(step, best score), metrics.jsonl (one JSON line per log window or validation), the best weights,
and the checkpoints a resume starts from, with `Progress`, where training stands. Only the main
process writes."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mt import MTError, __version__
from mt.checkpoint import load_trainer_state, load_weights, read_json, remove_stale_temp, save_weights, write_checkpoint
from mt.config import Config, save_config
from mt.files import atomic_write_json, atomic_write_text
from mt.rundir import CONFIG, META, METRICS, TRAINER_STATE, WEIGHTS, latest_checkpoint
from mt.train.log import Logger
from mt.train.optim import Optimization
from mt.train.world import World


@dataclass
class Progress:
    """Where training stands; saved in trainer_state.pt."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch of the epoch
    tokens: int = 0
    best_score: float | None = None
    best_step: int = 0
    bad_validations: int = 0

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def open_run_dir(cfg: Config, run_dir: Path, world: World, info: Callable[[str], None], resume: bool) -> None:
    """A fresh run: refuse a directory that holds files, then the main process makes it and writes
    config.yaml. A resume: remove what an interrupted process left half-written."""
    if resume:
        if world.is_main:
            for p in remove_stale_temp(run_dir):
                info(f"removed {p.name}, left half-written by an interrupted process")
        world.barrier()
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MTError(
            f"{run_dir} already holds files; resume with `mt train --resume {run_dir}` or choose another --run-dir"
        )
    world.barrier()  # every rank looks before rank 0 writes config.yaml into it
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG)


@dataclass(frozen=True)
class RunRecords:
    """Writing and reading a run's records; every write is a no-op off the main process."""

    run_dir: Path
    cfg: Config
    world: World
    log: Logger  # its TensorBoard gets the scalars of metrics.jsonl
    vocab_sizes: tuple[int, int]  # source, target (meta.json)

    def metrics(self, record: dict) -> None:
        """One line of metrics.jsonl (and TensorBoard)."""
        if not self.world.is_main:
            return
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        self.log.scalars(record)

    def truncate_metrics(self, step: int) -> None:
        """After a resume, forget log lines written after the checkpoint we resumed from."""
        path = self.run_dir / METRICS
        if not self.world.is_main or not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def read_meta(self) -> dict[str, Any]:
        """meta.json as it stands ({} before the first write)."""
        path = self.run_dir / META
        return read_json(path) if path.is_file() else {}

    def update_meta(self, entries: dict[str, Any]) -> None:
        """Set `entries` in meta.json, keeping the rest."""
        if self.world.is_main:
            atomic_write_json(self.run_dir / META, {**self.read_meta(), **entries})

    def write_meta(self, progress: Progress, result: dict | None) -> None:
        """meta.json: the step and the best score so far; `result`, the best validation, when it
        improved (then model.safetensors is again the best weights, see mt.rundir.weights_file)."""
        if not self.world.is_main:
            return
        meta = self.read_meta()
        meta.update({
            "mt_version": __version__,
            "arch": self.cfg.model.arch,
            "src_vocab_size": self.vocab_sizes[0],
            "tgt_vocab_size": self.vocab_sizes[1],
            "step": progress.step,
            "best_step": progress.best_step,
            "metric": self.cfg.train.metric,
            "best_score": progress.best_score,
        })
        if result is not None:
            meta["best_valid"] = result
            meta["best_weights"] = WEIGHTS
        atomic_write_json(self.run_dir / META, meta)

    def save_best(self, model: nn.Module, step: int) -> None:
        """model.safetensors: the best weights so far."""
        if self.world.is_main:
            save_weights(model, self.run_dir / WEIGHTS, {"step": str(step)})

    def checkpoint(self, model: nn.Module, opt: Optimization, progress: Progress) -> None:
        """checkpoints/step_N: weights, optimization state, RNG, progress (train.keep_last kept)."""
        if not self.world.is_main:
            return
        trainer_state = {"progress": progress.state(), **opt.state_dict(), "rng": rng_state()}
        meta = {"step": progress.step, "epoch": progress.epoch, "mt_version": __version__}
        write_checkpoint(self.run_dir, progress.step, model, trainer_state, meta, self.cfg.train.keep_last)

    def restore(self, model: nn.Module, opt: Optimization) -> tuple[Progress, float | None] | None:
        """Load the latest checkpoint into `model`, `opt` and the RNGs; returns its progress and the
        best score early stopping counts against (None when there is no checkpoint yet)."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            self.log.info(f"{self.run_dir} has no checkpoint yet: starting from step 0")
            return None
        load_weights(model, ckpt / WEIGHTS)
        saved = load_trainer_state(ckpt / TRAINER_STATE)
        try:
            opt.load_state_dict(saved)
            set_rng_state(saved["rng"])
            progress = Progress(**saved["progress"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise MTError(f"{ckpt}: trainer state does not fit this run ({e})") from None
        patience_best = progress.best_score
        # model.safetensors may hold a better model than the checkpoint knows of (a validation that
        # improved after the last checkpoint, then a crash): that best score stands, so that a worse
        # model never replaces it; early stopping still counts from the checkpoint's own best
        meta = self.read_meta()
        if (meta.get("metric") == self.cfg.train.metric and isinstance(meta.get("best_score"), (int, float))
                and isinstance(meta.get("best_step"), int) and meta["best_step"] > progress.step):
            progress.best_score, progress.best_step = float(meta["best_score"]), meta["best_step"]
        self.log.info(f"resumed from {ckpt.name} (step {progress.step}, epoch {progress.epoch})")
        return progress, patience_best
