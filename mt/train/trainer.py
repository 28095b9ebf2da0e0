"""The training loop: updates (mt.train.optim.TrainStep) over the run's batches (mt.train.data), and
when to validate (mt.train.validation), keep the best model, checkpoint (mt.train.records) and
stop: max_steps, max_epochs, max_minutes (and the horizon a time budget's schedule decays to),
early stopping. Several processes (mt.train.world) take
the same decisions at the same steps."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mt.checkpoint import load_weights, write_average
from mt.config import Config
from mt.device import keep_freed_host_memory
from mt.data.batching import TokenBatcher
from mt.models import build_model
from mt.rundir import AVERAGED, WEIGHTS, checkpoint_dirs
from mt.train import precision, validation
from mt.train.data import TrainData, load_train_data
from mt.train.log import Logger
from mt.train.optim import Optimization, TrainStep
from mt.train.records import Progress, RunRecords, open_run_dir
from mt.train.world import World


@dataclass
class TrainState:
    """Everything the loop changes: the model, its optimization, where training stands."""

    model: nn.Module  # the bare model: saved and validated
    train_model: nn.Module  # what the updates call: the model, DDP-wrapped and/or compiled
    opt: Optimization
    progress: Progress
    # the best score early stopping counts against; after a resume it can lag progress.best_score
    # (the best model on disk, see RunRecords.restore) until the replay gets past that best
    patience_best: float | None = None
    last_saved: int = -1
    last_validated: int = -1


@dataclass
class _Window:
    """Loss and throughput since the last log line."""

    start: float = field(default_factory=time.monotonic)
    tokens: int = 0
    loss_sum: Any = 0.0  # a tensor on the device once added to: read only when logged
    loss_tokens: int = 0

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.tokens += tokens
        self.loss_sum, self.loss_tokens = self.loss_sum + loss, self.loss_tokens + tokens


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_train_model(cfg: Config, data: TrainData, world: World, log: Logger,
                      init: bool = True) -> tuple[nn.Module, nn.Module]:
    """The model (initialised from train.init_from when fine-tuning and `init`), and the module the
    updates call: DDP-wrapped under torchrun, compiled with train.compile."""
    t = cfg.train
    model = build_model(cfg.model, len(data.src_vocab), len(data.tgt_vocab)).to(world.device)
    if t.init_from and init:
        source = Path(t.init_from)
        load_weights(model, source / WEIGHTS if source.is_dir() else source)
        log.info(f"initialised from {source}")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"model {cfg.model.arch}: {n_params / 1e6:.2f}M parameters on {world.device}")
    train_model = world.distribute(model)
    if t.compile:
        train_model = torch.compile(train_model)
    return model, train_model


class Trainer:
    """Trains `cfg` into `run_dir`, or goes on with the run there (`resume`): `train()` returns a
    summary (step, why it stopped, the best score and its step). Data, records and state are set by
    `train()`; under torchrun every process runs one Trainer."""

    #: train.horizon=minutes: the updates timed (after the first HORIZON_SKIP of this process, which
    #: hold start-up and the allocator's first pages) to estimate how many max_minutes hold
    HORIZON_SKIP, HORIZON_STEPS = 100, 200

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, log: Logger | None = None) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.world = World.from_env(cfg.train.device)
        keep_freed_host_memory()  # a step reuses the previous step's host pages (mt.device)
        self.log = log if log is not None else Logger(self.world.is_main)
        self.update = TrainStep(cfg.train, self.world)  # refuses fp16 off CUDA
        seed_everything(cfg.train.seed)
        self.started = self.clock()
        self.max_steps = cfg.train.max_steps  # lowered to the horizon once it is fixed
        self._horizon_timing: tuple[int, int, float | None] | None = None  # (from step, to step, clock at from)
        self.data: TrainData | None = None  # set by train()
        self.records: RunRecords | None = None  # set by train()
        self.state: TrainState | None = None  # set by train(): _build_state

    def train(self) -> dict[str, Any]:
        open_run_dir(self.cfg, self.run_dir, self.world, self.log.info, self.resume)
        if self.cfg.train.tensorboard:
            self.log.open_tensorboard(self.run_dir)
        try:
            self.data = load_train_data(self.cfg, self.run_dir, self.world, self.log.info, self.resume)
            sizes = (len(self.data.src_vocab), len(self.data.tgt_vocab))
            self.records = RunRecords(self.run_dir, self.cfg, self.world, self.log, sizes)
            self.state = self._build_state(self.data)
            self._choose_precision(self.state, self.data.batcher)
            self._plan_horizon(self.state)
            return self._loop(self.state, self.data.batcher)
        finally:  # the progress bar and TensorBoard's buffered events, on every way out (a DDP worker
            self.log.finish()  # leaves through os._exit, see mt.cli.main, so nothing else would close them)

    def _build_state(self, data: TrainData) -> TrainState:
        """Model and optimization, fresh or restored from the last checkpoint."""
        model, train_model = build_train_model(self.cfg, data, self.world, self.log, init=not self.resume)
        state = TrainState(model, train_model, Optimization.build(model, self.cfg, self.world.device), Progress())
        restored = self.records.restore(model, state.opt) if self.resume else None
        if restored is not None:
            state.progress, state.patience_best = restored
        else:
            self.records.write_meta(state.progress, None)
        if self.resume:
            state.last_saved = state.last_validated = state.progress.step
        self.records.truncate_metrics(state.progress.step)
        self.world.barrier()
        return state

    def _choose_precision(self, state: TrainState, batcher: TokenBatcher) -> None:
        """train.amp=auto: the precision the run chose when it started (a resume keeps it), else the
        faster of float32 and bf16 autocast in a probe on the first batches (mt.train.precision);
        every process takes rank 0's choice. The choice is recorded in meta.json."""
        setting = self.cfg.train.amp
        if setting != "auto":
            self.update.use(setting)
            return
        if self.resume:  # the run's own choice; a run from before train.amp=auto trained in float32
            recorded = self.records.read_meta().get("amp")
            used = recorded.get("used") if isinstance(recorded, dict) else None
            used = used if used in ("none", "bf16") else "none"
            self.update.use(used)
            self.log.info(f"precision {'float32' if used == 'none' else 'bf16'} (train.amp=auto: "
                          f"{'chosen when the run started' if recorded else 'as the run trained before auto existed'})")
            return
        batches = batcher.epoch_batches(0, self.world.rank, self.world.size)[:precision.PROBE_BATCHES]
        choice = precision.choose_amp(state.model, [batcher.collate(b) for b in batches], self.world.device)
        bf16 = self.world.agree(choice.amp == "bf16")
        if bf16 != (choice.amp == "bf16"):  # another process's probe: rank 0 decides for all
            choice = precision.AmpChoice("bf16" if bf16 else "none", "chosen by the first process")
        self.update.use(choice.amp)
        self.log.info(choice.describe())
        self.records.update_meta({"amp": choice.record(setting)})

    def clock(self) -> float:
        """Seconds, for max_minutes and the horizon's timing (time.monotonic; tests replace it)."""
        return time.monotonic()

    def _plan_horizon(self, state: TrainState) -> None:
        """train.horizon=minutes: keep the horizon a resumed run fixed before (its checkpoint holds
        it), or time this process's updates HORIZON_SKIP .. HORIZON_SKIP + HORIZON_STEPS to fix it."""
        horizon = state.opt.horizon
        if horizon is None:
            return
        if horizon.steps is not None:
            self.max_steps = min(self.max_steps, horizon.steps)
            self.log.info(f"learning rate decays to step {horizon.steps} (train.horizon=minutes, fixed when "
                          "the run started)")
            return
        start = state.progress.step + self.HORIZON_SKIP
        self._horizon_timing = (start, start + self.HORIZON_STEPS, None)

    def _time_horizon(self, state: TrainState) -> None:
        """At the ends of the timed updates: the steps max_minutes hold at that rate become the
        schedule's horizon (rank 0's estimate on every rank) and the run's last step."""
        first, last, since = self._horizon_timing  # type: ignore[misc]
        step, now = state.progress.step, self.clock()
        if step == first:
            self._horizon_timing = (first, last, now)
            return
        if step != last or since is None:
            return
        self._horizon_timing = None
        t = self.cfg.train
        per_s = (last - first) / max(now - since, 1e-9)
        left = max(t.max_minutes * 60 - (now - self.started), 0.0)
        horizon = state.opt.horizon
        assert horizon is not None
        horizon.fix(self.world.share(step + int(per_s * left)))
        self.max_steps = min(self.max_steps, horizon.steps)  # type: ignore[type-var]
        note = "" if step <= horizon.warmup else f"; the rate stayed at its peak until now (warm-up {horizon.warmup})"
        self.log.info(f"learning rate decays to step {horizon.steps} (train.horizon=minutes: {per_s:.2f} steps/s "
                      f"over steps {first}-{last}, {left / 60:.1f} of {t.max_minutes:g} minutes left{note})")
        self.records.update_meta({"horizon": {"steps": horizon.steps, "steps_per_s": round(per_s, 3),
                                              "timed": [first, last], "minutes_left": round(left / 60, 2)}})

    def _loop(self, state: TrainState, batcher: TokenBatcher) -> dict[str, Any]:
        t, progress, opt = self.cfg.train, state.progress, state.opt
        self.log.start(self.max_steps, progress.step, self.run_dir)
        stop: str | None = None
        window, epoch, batches = _Window(), -1, []
        while stop is None and progress.step < self.max_steps:
            if epoch != progress.epoch:
                epoch, batches = progress.epoch, batcher.epoch_batches(progress.epoch, self.world.rank, self.world.size)
            if progress.position >= len(batches):  # end of epoch
                progress.epoch, progress.position = progress.epoch + 1, 0
                if t.max_epochs and progress.epoch >= t.max_epochs:
                    stop = "max_epochs"
                continue
            group = batches[progress.position : progress.position + t.accum]
            lr = opt.lr  # the rate this update uses (logged)
            loss, ntok, stepped = self.update(state.train_model, opt.optimizer, opt.scaler,
                                              [batcher.collate(b) for b in group])
            if stepped:  # fp16: an update skipped for inf/nan gradients does not advance the schedule
                opt.scheduler.step()
            progress.position, progress.step = progress.position + len(group), progress.step + 1
            progress.tokens += ntok
            window.add(loss, ntok)
            if self._horizon_timing is not None:
                self._time_horizon(state)
            if progress.step % t.log_every == 0 or progress.step == self.max_steps:
                self._log_window(progress, window, lr)
                window = _Window()
            else:
                self.log.tick(progress.step)
            stop = self._maybe_validate_and_save(state)
        return self._finish(state, stop or ("horizon" if self.max_steps < t.max_steps else "max_steps"))

    def _log_window(self, progress: Progress, window: _Window, lr: float) -> None:
        record = {
            "step": progress.step,
            "epoch": progress.epoch,
            "loss": float(window.loss_sum) / max(window.loss_tokens, 1),
            "lr": lr,
            "tokens_per_s": window.tokens * self.world.size / max(time.monotonic() - window.start, 1e-9),
        }
        self.records.metrics(record)
        self.log.step(record)

    def _finish(self, state: TrainState, stop: str) -> dict[str, Any]:
        progress, metric = state.progress, self.cfg.train.metric
        if state.last_saved != progress.step:
            self._validate_and_save(state, force_save=True)
        self._check_replicas(state.model)
        if self.cfg.train.average_last and self.world.is_main:
            self._average_checkpoints(state)
        summary = {"step": progress.step, "stop": stop, "best_score": progress.best_score,
                   "best_step": progress.best_step, "metric": metric, "run_dir": str(self.run_dir)}
        if self.world.is_main:
            self.log.info(f"done at step {progress.step} ({stop}); "
                          f"best {metric} {progress.best_score} at step {progress.best_step}")
        self.world.close()
        return summary

    def _average_checkpoints(self, state: TrainState) -> None:
        """train.average_last: average the last N checkpoints into averaged.safetensors and validate
        it; where it scores better than the best checkpoint, it becomes the run's best weights
        (meta.json "best_weights", which `mt translate -m RUN` decodes)."""
        t, progress = self.cfg.train, state.progress
        dirs = checkpoint_dirs(self.run_dir)[-t.average_last:]
        write_average([d / WEIGHTS for d in dirs], self.run_dir / AVERAGED)
        entry: dict[str, Any] = {"checkpoints": [d.name for d in dirs]}
        chosen = False
        if self.data is not None and self.data.valid is not None:
            averaged = copy.deepcopy(state.model)
            load_weights(averaged, self.run_dir / AVERAGED)
            result = self.validate(averaged)
            chosen = validation.better(t.metric, result[t.metric], progress.best_score)
            entry.update(valid=result, chosen=chosen)
            self.records.metrics({"step": progress.step, "averaged_valid": result})
            best = "none" if progress.best_score is None else f"{progress.best_score:.2f}"
            self.log.info(f"averaged {len(dirs)} checkpoints ({dirs[0].name} .. {dirs[-1].name}): {t.metric} "
                          f"{result[t.metric]:.2f} against the best checkpoint's {best}; "
                          f"decoding uses {AVERAGED if chosen else WEIGHTS}")
        else:
            self.log.info(f"averaged {len(dirs)} checkpoints into {AVERAGED} (no validation set: not compared)")
        self.records.update_meta({"averaged": entry, "best_weights": AVERAGED if chosen else WEIGHTS})

    # -- when to validate, save and stop ------------------------------------------------------
    def _save_every(self) -> int:
        return self.cfg.train.save_every or self.cfg.train.valid_every

    def _maybe_validate_and_save(self, state: TrainState) -> str | None:
        t, step = self.cfg.train, state.progress.step
        out_of_time = False
        if t.max_minutes:  # every rank takes rank 0's clock, so all stop at the same step
            out_of_time = self.world.agree((self.clock() - self.started) / 60 >= t.max_minutes)
        if step % t.valid_every == 0 or step % self._save_every() == 0 or out_of_time:
            stop = self._validate_and_save(state, force_save=out_of_time)
            if stop:
                return stop
        return "max_minutes" if out_of_time else None

    def _validate_and_save(self, state: TrainState, force_save: bool = False) -> str | None:
        t, progress, main = self.cfg.train, state.progress, self.world.is_main
        has_valid = self.data is not None and self.data.valid is not None
        stop = None
        # (the final save after a validation step must not validate, and count a bad validation, twice)
        validate_now = (has_valid and state.last_validated != progress.step
                        and (progress.step % t.valid_every == 0 or force_save))
        if validate_now:
            state.last_validated = progress.step
        if main and validate_now:
            stop = self._validate_and_keep_best(state)
        elif main and not has_valid and (progress.step % self._save_every() == 0 or force_save):
            # no validation set: the latest weights are the best we know
            self.records.save_best(state.model, progress.step)
            progress.best_step = progress.step
            self.records.write_meta(progress, None)
        if state.opt.plateau is not None:
            self.world.sync_lr(state.opt.optimizer)  # rank 0 stepped the plateau scheduler
        # only rank 0 validates: every rank learns its decision before choosing to save, so that all
        # of them take the same path (and meet in the same collective calls) afterwards
        stop = "early_stop" if self.world.agree(stop == "early_stop") else None
        if progress.step % self._save_every() == 0 or force_save or stop:
            self.records.checkpoint(state.model, state.opt, progress)
            state.last_saved = progress.step
        return stop

    def _validate_and_keep_best(self, state: TrainState) -> str | None:
        """Rank 0: validate, step the plateau schedule, save a new best model, count patience;
        returns "early_stop" when patience has run out."""
        t, progress = self.cfg.train, state.progress
        result = self.validate()
        score = result[t.metric]
        if state.opt.plateau is not None:
            state.opt.plateau.step(score)
        # (the second clause: the replay of the best validation after a resume, see RunRecords.restore)
        improved = validation.better(t.metric, score, progress.best_score) or (
            progress.step == progress.best_step and score == progress.best_score)
        if improved:
            progress.best_score, progress.best_step = score, progress.step
            self.records.save_best(state.model, progress.step)
        if improved or validation.better(t.metric, score, state.patience_best):
            state.patience_best, progress.bad_validations = score, 0
        else:
            progress.bad_validations += 1
        self.records.metrics({"step": progress.step, "valid": result, "best": improved})
        self.log.validation(progress.step, result, improved)
        self.records.write_meta(progress, result if improved else None)
        return "early_stop" if t.patience and progress.bad_validations >= t.patience else None

    def validate(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Validate `model` (default: the model as it stands): loss, BLEU, chrF with decode.*."""
        assert self.data is not None and self.state is not None
        model = model if model is not None else self.state.model
        return validation.validate(model, self.data, self.cfg.decode, self.world.device)

    def _check_replicas(self, model: nn.Module) -> None:
        """DDP: all replicas must hold identical weights; record the check in metrics.jsonl."""
        if self.world.size == 1:
            return
        flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
        checksum = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()]).double().to(self.world.device)
        gathered = self.world.gather(checksum)
        identical = all(torch.equal(gathered[0], g) for g in gathered)
        self.records.metrics({"step": -1, "replicas": self.world.size, "replicas_identical": identical,
                              "checksums": [g.tolist() for g in gathered]})
        if not identical:
            raise RuntimeError("DDP replicas diverged")


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    return Trainer(cfg, run_dir, resume).train()
