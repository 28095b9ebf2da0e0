"""Trainer: label-smoothed loss, schedules, AMP, accumulation, clipping, validation with the real
Search, best / last-k checkpoints, early stopping, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mt import MTError, __version__
from mt.checkpoint import (
    load_trainer_state,
    load_weights,
    read_json,
    remove_stale_temp,
    save_weights,
    unwrap,
    write_checkpoint,
)
from mt.config import Config, save_config
from mt.data.batching import TokenBatcher
from mt.data.dataset import MANIFEST, PreparedData, sha256_file
from mt.device import resolve_device
from mt.files import atomic_copy, atomic_write_json, atomic_write_text
from mt.models import build_model
from mt.data.prepare import check_prepared, prepare
from mt.rundir import (
    CONFIG, META, METRICS, PREPARED, TRAINER_STATE, WEIGHTS, is_run_dir, latest_checkpoint, vocab_files,
)
from mt.decode.search import build_search
from mt.data.text import load_corpus
from mt.decode.translator import Translator
from mt.data.vocab import PAD_ID, Vocab


# ----------------------------------------------------------------------------------------------
# pieces


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Sum over real target tokens of the label-smoothed cross-entropy (padding ignored)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
        reduction="sum",
    )


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    kwargs = dict(lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    # fused kernels (CUDA, and CPU since torch 2.4): one kernel over all parameters instead of one
    # per operation and parameter group (benchmarks/train_speed.py --ablations compares fused,
    # foreach and the for-loop)
    if device.type in ("cuda", "cpu"):
        try:
            return cls(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, TypeError):  # a dtype or build without fused support
            pass
    return cls(model.parameters(), **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """Per-step scheduler (torch.optim.lr_scheduler), plus a ReduceLROnPlateau for schedule=plateau."""
    t = cfg.train
    sched = torch.optim.lr_scheduler
    warmup = max(t.warmup, 0)
    # Every schedule warms up the same way: update k (1-based) of the first `warmup` updates uses
    # lr * k / warmup, so the full lr is reached at update `warmup`. The scheduler's counter is the
    # number of updates already done, so update k sees last_epoch = k - 1.
    if t.schedule == "inverse_sqrt":
        # Vaswani et al. (Noam) / fairseq inverse_sqrt: lr * min(k / warmup, sqrt(warmup / k))
        def factor(done: int) -> float:
            k = done + 1
            if warmup and k < warmup:
                return k / warmup
            return math.sqrt(max(warmup, 1) / k)

        return sched.LambdaLR(optimizer, factor), None
    # LinearLR from 1/warmup at k = 1 to 1 at k = warmup (its counter k - 1 runs 0 .. warmup - 1)
    start = 1.0 / warmup if warmup else 1.0
    warm = sched.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=max(warmup - 1, 0))
    if t.schedule == "cosine":
        cosine = sched.CosineAnnealingLR(optimizer, T_max=max(t.max_steps - warmup, 1), eta_min=t.min_lr)
        return sched.SequentialLR(optimizer, [warm, cosine], milestones=[max(warmup, 1)]), None
    if t.schedule == "plateau":
        mode = "min" if t.metric == "loss" else "max"
        plateau = sched.ReduceLROnPlateau(
            optimizer, mode=mode, factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
        )
        return warm, plateau
    return warm, None  # constant after warmup


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


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# what the loop works on


@dataclass
class Optimization:
    """The optimizer and what drives it, travelling as one: per-step scheduler, the plateau scheduler
    of schedule=plateau (stepped by validation scores), the fp16 loss scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    plateau: Any  # ReduceLROnPlateau or None
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, model: nn.Module, cfg: Config, device: torch.device) -> "Optimization":
        optimizer = build_optimizer(model, cfg, device)
        scheduler, plateau = build_scheduler(optimizer, cfg)
        return cls(optimizer, scheduler, plateau, torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16"))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class TrainData:
    """The vocabularies, the training batches and the validation set of a run."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    batcher: TokenBatcher
    valid: tuple[list[str], list[str]] | None  # validation text (BLEU / chrF)
    valid_batcher: TokenBatcher | None  # its pairs that fit the model (validation loss)


@dataclass
class TrainState:
    """Everything the loop changes: the model, its optimization, where training stands."""

    model: nn.Module  # the bare model: saved and validated
    train_model: nn.Module  # what the updates call: the model, DDP-wrapped and/or compiled
    opt: Optimization
    progress: Progress
    # the best score early stopping counts against; after a resume it can lag progress.best_score
    # (the best model on disk, see _restore) until the replay gets past that best
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


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, log=None) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.rank, self.world, local_rank = _distributed()
        self.is_main = self.rank == 0
        self.log = log if log is not None else _Logger(self.is_main)
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise MTError("train.amp=fp16 needs a CUDA device (use bf16 or none on CPU)")
        seed_everything(cfg.train.seed)
        self.started = time.monotonic()
        self.data: TrainData | None = None  # set by train(): _load_data
        self.state: TrainState | None = None  # set by train(): _build_state

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        self._prepare_run_dir()
        if self.cfg.train.tensorboard:
            self.log.open_tensorboard(self.run_dir)
        try:
            self.data = self._load_data()
            self.state = self._build_state(self.data)
            return self._loop(self.state, self.data.batcher)
        finally:  # the progress bar and TensorBoard's buffered events, on every way out (a DDP worker
            self.log.finish()  # leaves through os._exit, see mt.cli.main, so nothing else would close them)

    def _loop(self, state: TrainState, batcher: TokenBatcher) -> dict[str, Any]:
        t, progress, opt = self.cfg.train, state.progress, state.opt
        self.log.start(t.max_steps, progress.step, self.run_dir)
        stop: str | None = None
        window, epoch, batches = _Window(), -1, []
        while stop is None and progress.step < t.max_steps:
            if epoch != progress.epoch:
                epoch, batches = progress.epoch, batcher.epoch_batches(progress.epoch, self.rank, self.world)
            if progress.position >= len(batches):  # end of epoch
                progress.epoch, progress.position = progress.epoch + 1, 0
                if t.max_epochs and progress.epoch >= t.max_epochs:
                    stop = "max_epochs"
                continue
            group = batches[progress.position : progress.position + t.accum]
            lr = opt.lr  # the rate this update uses (logged)
            loss, ntok, stepped = self._update(state.train_model, opt.optimizer, opt.scaler, [batcher.collate(b) for b in group])
            if stepped:  # fp16: an update skipped for inf/nan gradients does not advance the schedule
                opt.scheduler.step()
            progress.position, progress.step, progress.tokens = progress.position + len(group), progress.step + 1, progress.tokens + ntok
            window.add(loss, ntok)
            if progress.step % t.log_every == 0 or progress.step == t.max_steps:
                self._log_window(progress, window, lr)
                window = _Window()
            else:
                self.log.tick(progress.step)
            stop = self._maybe_validate_and_save(state)
        return self._finish(state, stop or "max_steps")

    def _log_window(self, progress: Progress, window: _Window, lr: float) -> None:
        record = {
            "step": progress.step,
            "epoch": progress.epoch,
            "loss": float(window.loss_sum) / max(window.loss_tokens, 1),
            "lr": lr,
            "tokens_per_s": window.tokens * self.world / max(time.monotonic() - window.start, 1e-9),
        }
        self._metrics(record)
        self.log.step(record)

    def _finish(self, state: TrainState, stop: str) -> dict[str, Any]:
        progress, metric = state.progress, self.cfg.train.metric
        if state.last_saved != progress.step:
            self._validate_and_save(state, force_save=True)
        self._check_replicas()
        summary = {"step": progress.step, "stop": stop, "best_score": progress.best_score,
                   "best_step": progress.best_step, "metric": metric, "run_dir": str(self.run_dir)}
        if self.is_main:
            self.log.info(f"done at step {progress.step} ({stop}); best {metric} {progress.best_score} at step {progress.best_step}")
        _cleanup_distributed(self.world)
        return summary

    # -- preparation ----------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if self.resume:
            if self.is_main:
                for p in remove_stale_temp(self.run_dir):
                    self.log.info(f"removed {p.name}, left half-written by an interrupted process")
            _barrier(self.world)
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise MTError(
                f"{self.run_dir} already holds files; resume with `mt train --resume {self.run_dir}` "
                "or choose another --run-dir"
            )
        _barrier(self.world)  # every rank looks before rank 0 writes config.yaml into it
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / CONFIG)

    def _max_len(self) -> int:
        """data.max_len, capped so that a sentence plus eos (bos) fits a Transformer's positions."""
        positions = getattr(self.cfg.model, "max_positions", None)
        return min(self.cfg.data.max_len, positions - 1) if positions else self.cfg.data.max_len

    def _load_data(self) -> TrainData:
        """The prepared training corpus (data.prepared, or RUN_DIR/prepared made here by rank 0 on
        the first start), the run's vocabularies, and the validation set."""
        cfg, t = self.cfg, self.cfg.train
        root = Path(cfg.data.prepared) if cfg.data.prepared else self.run_dir / PREPARED
        if self.is_main and not cfg.data.prepared and not (root / MANIFEST).is_file():
            own = vocab_files(self.run_dir, cfg.vocab.joint)[: 1 if cfg.vocab.joint else 2]
            # a run started before prepared corpora existed keeps its vocabulary
            vocab = own if own[0].is_file() else self._parent_vocab() if t.init_from else None
            prepare(cfg, root, log=self.log.info, vocab_from=vocab, force=self.resume)
        _barrier(self.world)
        prepared = PreparedData.open(root)
        check_prepared(prepared, cfg)
        src_vocab, tgt_vocab = self._vocabs(prepared)
        batcher = TokenBatcher(prepared.src, prepared.tgt, t.batch_tokens, t.seed,
                               corpora=[(c["start"], c["end"], float(c["weight"])) for c in prepared.corpora],
                               temperature=cfg.data.temperature, max_len=self._max_len())
        if len(batcher) < self.world:
            raise MTError(f"only {len(batcher)} batches for {self.world} processes; use a smaller train.batch_tokens")
        shares = ", ".join(f"{c['name']} {n}" for c, n in zip(prepared.corpora, batcher.shares))
        self.log.info(f"{prepared.manifest['pairs']} training pairs from {root}"
                      + (f" ({batcher.skipped} longer than {self._max_len()} tokens skipped)" if batcher.skipped else "")
                      + (f"; per epoch: {shares}" if len(prepared.corpora) > 1 else "")
                      + f"; vocab {len(src_vocab)}/{len(tgt_vocab)}")
        valid = load_corpus(cfg.data, t.seed, splits=("valid",)).get("valid")
        valid, valid_batcher = self._validation_set(valid, src_vocab, tgt_vocab)
        return TrainData(src_vocab, tgt_vocab, batcher, valid, valid_batcher)

    def _validation_set(self, valid, src_vocab: Vocab, tgt_vocab: Vocab):
        if valid is None:
            return None, None
        t = self.cfg.train
        vs, vt = valid
        if t.valid_max_sentences:
            vs, vt = vs[: t.valid_max_sentences], vt[: t.valid_max_sentences]
        # the validation loss needs a teacher-forced pass, so it skips pairs the model has no
        # positions for; BLEU / chrF cover every sentence (the translator cuts long inputs)
        positions = getattr(self.cfg.model, "max_positions", None)
        ids = [(a, b) for a, b in zip(src_vocab.encode_batch(vs), tgt_vocab.encode_batch(vt))
               if not positions or max(len(a), len(b)) < positions]
        if len(ids) < len(vs):
            self.log.info(f"validation loss over {len(ids)} of {len(vs)} pairs (the others exceed model.max_positions)")
        return (vs, vt), TokenBatcher.from_lists([a for a, _ in ids], [b for _, b in ids], t.batch_tokens, 0)

    def _vocabs(self, prepared: PreparedData) -> tuple[Vocab, Vocab]:
        """The run's SentencePiece model(s): those of the prepared corpus, copied into the run
        directory on the first start and the same file on every resume."""
        files = vocab_files(self.run_dir, self.cfg.vocab.joint)
        theirs = prepared.vocab_files()
        if t_init := self.cfg.train.init_from:
            parent = self._parent_vocab()
            if [sha256_file(p) for p in parent] != [sha256_file(p) for p in theirs]:
                raise MTError(f"train.init_from: {t_init} has another vocabulary than the prepared corpus {prepared.root}; "
                              "fine-tuning needs the same vocabulary (prepare with the parent's)")
        for mine, source in zip(files, theirs):
            if not mine.is_file():
                if self.is_main:
                    atomic_copy(source, mine)
            elif sha256_file(mine) != prepared.manifest["vocab"][source.name]:
                raise MTError(f"{mine} is not the vocabulary {prepared.root} was prepared with; "
                              "a run keeps the vocabulary it started with")
        _barrier(self.world)
        src_vocab = Vocab(files[0])
        return src_vocab, (src_vocab if files[1] == files[0] else Vocab(files[1]))

    def _parent_vocab(self) -> tuple[Path, ...]:
        """train.init_from's SentencePiece model(s), after checking they fit this recipe."""
        init = Path(self.cfg.train.init_from)
        parent_run = init if init.is_dir() else init.parent
        if not is_run_dir(parent_run):
            raise MTError(f"train.init_from: {init} is not a run directory (no {CONFIG})")
        from mt.config import load_config

        parent_cfg = load_config(parent_run / CONFIG)
        for key in ("joint", "size", "model_type"):
            theirs, ours = getattr(parent_cfg.vocab, key), getattr(self.cfg.vocab, key)
            if theirs != ours:
                raise MTError(
                    f"train.init_from: the vocabulary differs ({parent_run} has vocab.{key}={theirs}, "
                    f"this recipe {ours}); fine-tuning needs the same vocabulary"
                )
        files = vocab_files(parent_run, parent_cfg.vocab.joint)
        return files[:1] if parent_cfg.vocab.joint else files

    def _build_model(self, data: TrainData) -> tuple[nn.Module, nn.Module]:
        """The model (initialised from train.init_from when fine-tuning), and the module the updates
        call: DDP-wrapped under torchrun, compiled with train.compile."""
        t = self.cfg.train
        model = build_model(self.cfg.model, len(data.src_vocab), len(data.tgt_vocab)).to(self.device)
        if t.init_from and not self.resume:
            init = Path(t.init_from)
            load_weights(model, init / WEIGHTS if init.is_dir() else init)
            self.log.info(f"initialised from {init}")
        n_params = sum(p.numel() for p in model.parameters())
        self.log.info(f"model {self.cfg.model.arch}: {n_params / 1e6:.2f}M parameters on {self.device}")
        train_model: nn.Module = model
        if self.world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if t.compile:
            train_model = torch.compile(train_model)
        return model, train_model

    def _build_state(self, data: TrainData) -> TrainState:
        """Model and optimization, fresh or restored from the last checkpoint."""
        model, train_model = self._build_model(data)
        state = TrainState(model, train_model, Optimization.build(model, self.cfg, self.device), Progress())
        if self.resume:
            self._restore(state)
            state.last_saved = state.last_validated = state.progress.step
        elif self.is_main:
            self._write_meta(state.progress, None)
        self._truncate_metrics(state.progress.step)
        _barrier(self.world)
        return state

    def _save_every(self) -> int:
        return self.cfg.train.save_every or self.cfg.train.valid_every

    def _maybe_validate_and_save(self, state: TrainState) -> str | None:
        t, step = self.cfg.train, state.progress.step
        out_of_time = False
        if t.max_minutes:  # every rank takes rank 0's clock, so all stop at the same step
            out_of_time = _agree((time.monotonic() - self.started) / 60 >= t.max_minutes, self.world, self.device)
        if step % t.valid_every == 0 or step % self._save_every() == 0 or out_of_time:
            stop = self._validate_and_save(state, force_save=out_of_time)
            if stop:
                return stop
        return "max_minutes" if out_of_time else None
    def _update(self, model, optimizer, scaler, batches) -> tuple[torch.Tensor, int, bool]:
        """One optimizer step over `batches` (gradient accumulation); returns (loss sum as a tensor
        on the device, read only when logged: no sync per step; tokens; whether the optimizer
        stepped, False when fp16 loss scaling skipped the update)."""
        t = self.cfg.train
        model.train()
        total_tokens = sum(b.ntokens for b in batches)
        # the loss is a sum over tokens divided by the tokens of the whole update; under DDP that is
        # the tokens of all replicas, times the replicas (DDP averages the gradients), so that every
        # token weighs the same whatever replica it was on
        denom = _global_tokens(total_tokens, self.world, self.device) / self.world if self.world > 1 else total_tokens
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            sync = i == len(batches) - 1 or self.world == 1
            ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else nullcontext()
            with ctx:
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    logits = model(batch.src, batch.src_lengths, batch.tgt_in)
                loss = label_smoothed_loss(logits, batch.tgt_out, t.label_smoothing)
                scaler.scale(loss / denom).backward()
            loss_sum += loss.detach().float()
        if t.clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        stepped = scale is None or scaler.get_scale() >= scale  # the scale drops exactly when a step is skipped
        return loss_sum, total_tokens, stepped

    # -- validation and checkpoints -----------------------------------------------------------
    def _validate_and_save(self, state: TrainState, force_save: bool = False) -> str | None:
        t, progress = self.cfg.train, state.progress
        has_valid = self.data is not None and self.data.valid is not None
        stop = None
        # (the final save after a validation step must not validate, and count a bad validation, twice)
        validate_now = (has_valid and state.last_validated != progress.step
                        and (progress.step % t.valid_every == 0 or force_save))
        if validate_now:
            state.last_validated = progress.step
        if self.is_main and validate_now:
            stop = self._validate_and_keep_best(state)
        elif self.is_main and not has_valid and (progress.step % self._save_every() == 0 or force_save):
            # no validation set: the latest weights are the best we know
            save_weights(state.model, self.run_dir / WEIGHTS, {"step": str(progress.step)})
            progress.best_step = progress.step
            self._write_meta(progress, None)
        if state.opt.plateau is not None:
            _sync_lr(state.opt.optimizer, self.world, self.device)  # rank 0 stepped the plateau scheduler
        # only rank 0 validates: every rank learns its decision before choosing to save, so that all
        # of them take the same path (and meet in the same collective calls) afterwards
        stop = "early_stop" if _agree(stop == "early_stop", self.world, self.device) else None
        if progress.step % self._save_every() == 0 or force_save or stop:
            self._checkpoint(state)
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
        # (the second clause: the replay of the best validation after a resume, see _restore)
        improved = better(t.metric, score, progress.best_score) or (
            progress.step == progress.best_step and score == progress.best_score)
        if improved:
            progress.best_score, progress.best_step = score, progress.step
            save_weights(state.model, self.run_dir / WEIGHTS, {"step": str(progress.step)})
        if improved or better(t.metric, score, state.patience_best):
            state.patience_best, progress.bad_validations = score, 0
        else:
            progress.bad_validations += 1
        self._metrics({"step": progress.step, "valid": result, "best": improved})
        self.log.validation(progress.step, result, improved)
        self._write_meta(progress, result if improved else None)
        return "early_stop" if t.patience and progress.bad_validations >= t.patience else None

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        from mt.metrics import score as score_metrics

        assert self.data is not None and self.data.valid is not None and self.state is not None
        data, model = self.data, self.state.model
        was_training = model.training
        model.eval()
        loss, tokens = 0.0, 0
        for indices in data.valid_batcher.batches:
            batch = data.valid_batcher.collate(indices).to(self.device)
            logits = model(batch.src, batch.src_lengths, batch.tgt_in)
            loss += float(label_smoothed_loss(logits, batch.tgt_out, 0.0))
            tokens += batch.ntokens
        search = build_search(self.cfg.decode)
        translator = Translator(model, data.src_vocab, data.tgt_vocab, search, self.device, self.cfg.decode.batch_tokens,
                                warn=lambda msg: None)
        src, refs = data.valid
        hyps = [tr.text for tr in translator.translate(src)]
        scores = score_metrics(hyps, refs, metrics=("bleu", "chrf"))
        model.train(was_training)
        nll = loss / max(tokens, 1)
        return {
            "loss": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "bleu": scores["bleu"].score,
            "chrf": scores["chrf"].score,
            "bleu_signature": scores["bleu"].signature,
            "chrf_signature": scores["chrf"].signature,
            "sentences": len(src),
            "search": self.cfg.decode.search,
        }

    def _checkpoint(self, state: TrainState) -> None:
        if not self.is_main:
            return
        progress = state.progress
        trainer_state = {"progress": progress.state(), **state.opt.state_dict(), "rng": rng_state()}
        meta = {"step": progress.step, "epoch": progress.epoch, "mt_version": __version__}
        write_checkpoint(self.run_dir, progress.step, state.model, trainer_state, meta, self.cfg.train.keep_last)

    def _restore(self, state: TrainState) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            self.log.info(f"{self.run_dir} has no checkpoint yet: starting from step 0")
            if self.is_main:
                self._write_meta(state.progress, None)
            return
        load_weights(state.model, ckpt / WEIGHTS)
        saved = load_trainer_state(ckpt / TRAINER_STATE)
        try:
            state.opt.load_state_dict(saved)
            set_rng_state(saved["rng"])
            progress = Progress(**saved["progress"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise MTError(f"{ckpt}: trainer state does not fit this run ({e})") from None
        state.patience_best = progress.best_score
        # model.safetensors may hold a better model than the checkpoint knows of (a validation that
        # improved after the last checkpoint, then a crash): that best score stands, so that a worse
        # model never replaces it; early stopping still counts from the checkpoint's own best
        meta_path = self.run_dir / META
        meta = read_json(meta_path) if meta_path.is_file() else {}
        if (meta.get("metric") == self.cfg.train.metric and isinstance(meta.get("best_score"), (int, float))
                and isinstance(meta.get("best_step"), int) and meta["best_step"] > progress.step):
            progress.best_score, progress.best_step = float(meta["best_score"]), meta["best_step"]
        state.progress = progress
        self.log.info(f"resumed from {ckpt.name} (step {progress.step}, epoch {progress.epoch})")

    def _write_meta(self, progress: Progress, result: dict | None) -> None:
        assert self.data is not None
        path = self.run_dir / META
        meta = read_json(path) if path.is_file() else {}
        meta.update(
            {
                "mt_version": __version__,
                "arch": self.cfg.model.arch,
                "src_vocab_size": len(self.data.src_vocab),
                "tgt_vocab_size": len(self.data.tgt_vocab),
                "step": progress.step,
                "best_step": progress.best_step,
                "metric": self.cfg.train.metric,
                "best_score": progress.best_score,
            }
        )
        if result is not None:
            meta["best_valid"] = result
        atomic_write_json(path, meta)

    def _metrics(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        self.log.scalars(record)

    def _truncate_metrics(self, step: int) -> None:
        """After a resume, forget log lines written after the checkpoint we resumed from."""
        path = self.run_dir / METRICS
        if not self.is_main or not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def _check_replicas(self) -> None:
        """DDP: all replicas must hold identical weights; record the check in metrics.jsonl."""
        if self.world == 1:
            return
        flat = torch.cat([p.detach().float().reshape(-1) for p in self.state.model.parameters()])
        checksum = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()]).double().to(self.device)
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        dist.all_gather(gathered, checksum)
        identical = all(torch.equal(gathered[0], g) for g in gathered)
        self._metrics({"step": -1, "replicas": self.world, "replicas_identical": identical,
                       "checksums": [g.tolist() for g in gathered]})
        if not identical:
            raise RuntimeError("DDP replicas diverged")


# ----------------------------------------------------------------------------------------------
# distributed helpers


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MT_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _cleanup_distributed(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is True on rank 0."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _sync_lr(optimizer: torch.optim.Optimizer, world: int, device: torch.device) -> None:
    if world == 1:
        return
    lrs = torch.tensor([g["lr"] for g in optimizer.param_groups], dtype=torch.float64, device=device)
    dist.broadcast(lrs, 0)
    for g, lr in zip(optimizer.param_groups, lrs.tolist()):
        g["lr"] = lr


def _global_tokens(tokens: int, world: int, device: torch.device) -> torch.Tensor:
    """Target tokens of this update summed over all replicas, as a 0-d tensor on `device` (read
    by the loss division on the device: no host sync)."""
    t = torch.tensor(float(tokens), device=device)
    dist.all_reduce(t)
    return t


# ----------------------------------------------------------------------------------------------
# console output


class _Logger:
    """Rich progress bar on a terminal; plain lines otherwise. Only rank 0 speaks."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = None
        self.task = None
        self.writer = None

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(f"[bold]mt[/bold] {msg}", highlight=False)

    def start(self, total: int, step: int, run_dir: Path) -> None:
        if not self.enabled:
            return
        self.info(f"run directory: {run_dir}   (resume with: mt train --resume {run_dir})")
        if self.console.is_terminal:
            import rich.progress as bar

            self.bar = bar.Progress(
                bar.TextColumn("step"),
                bar.MofNCompleteColumn(),
                bar.BarColumn(),
                bar.TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
                bar.TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=step, loss="-", lr="-", tps="-")
            self.bar.start()

    def tick(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def step(self, r: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=r["step"], loss=f"{r['loss']:.3f}", lr=f"{r['lr']:.2e}",
                            tps=f"{r['tokens_per_s']:.0f}")
        else:
            self.info(f"step {r['step']}  epoch {r['epoch']}  loss {r['loss']:.3f}  lr {r['lr']:.2e}  "
                      f"{r['tokens_per_s']:.0f} tok/s")

    def validation(self, step: int, r: dict, improved: bool) -> None:
        self.info(
            f"valid step {step}: loss {r['loss']:.3f} ppl {r['ppl']:.2f} BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f}"
            + ("  (best)" if improved else "")
        )

    def scalars(self, record: dict) -> None:
        if self.writer is not None:
            step = record.get("step", 0)
            flat = {**{k: v for k, v in record.items() if k != "valid"},
                    **{f"valid/{k}": v for k, v in (record.get("valid") or {}).items()}}
            for k, v in flat.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(k, v, step)

    def open_tensorboard(self, run_dir: Path) -> None:
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MTError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    return Trainer(cfg, run_dir, resume).train()
