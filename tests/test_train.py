"""The trainer (mt/train/trainer.py): loss, optimisers, schedules, clipping, accumulation, seeds, validation,
best / last-k checkpoints, early stopping, averaging, fine-tuning, exact resume after SIGKILL, DDP.

Everything trains a tiny Transformer on a small slice of the built-in synthetic pair. Training runs
in this process where it can; the exact-resume and DDP tests start `mt` in subprocesses (one torch
thread each, so the bitwise comparisons do not depend on the machine's load).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import sacrebleu
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from mt import MTError
from mt.config import config_from_dict
from mt.data.batching import collate
from mt.models import build_model
from mt.train.optim import TrainStep, build_optimizer, build_scheduler, label_smoothed_loss
from mt.train.trainer import Trainer
from mt.train.world import World
from mt.data.vocab import PAD_ID


def recipe(**sections: dict) -> dict:
    """The tiny recipe as a dict; keyword arguments update its sections."""
    base = {
        "name": "tiny",
        "data": {"corpus": "synthetic", "synthetic_train": 120, "synthetic_valid": 12, "synthetic_test": 4,
                 "synthetic_max_clauses": 1},
        "vocab": {"size": 100, "byte_fallback": False},  # 100 pieces leave no room for 256 bytes
        "model": {"arch": "transformer", "d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1,
                  "ff_dim": 64, "dropout": 0.1},
        "train": {"batch_tokens": 250, "max_steps": 24, "save_every": 4, "valid_every": 8, "warmup": 4,
                  "lr": 3e-3, "log_every": 4, "keep_last": 2},
        "decode": {"search": "greedy", "max_len_b": 5},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def train_here(run_dir: Path, resume: bool = False, **sections: dict) -> dict:
    return Trainer(config_from_dict(recipe(**sections)), run_dir, resume=resume).train()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run with real validation: 24 steps, checkpoints every 4, validation every 8, keep 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("finished") / "run"
    summary = train_here(run)
    torch.set_num_threads(threads)
    assert summary["step"] == 24 and summary["stop"] == "max_steps"
    return run


# ----------------------------------------------------------------------------------------------
# loss, optimiser, schedules


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_manual_and_ignores_padding(smoothing: float) -> None:
    torch.manual_seed(0)
    V = 7
    logits = torch.randn(3, 5, V)
    target = torch.tensor([[4, 5, 6, 3, PAD_ID], [5, 3, PAD_ID, PAD_ID, PAD_ID], [6, 6, 4, 5, 3]])
    logp = logits.log_softmax(-1)
    manual = 0.0
    for b in range(3):
        for t in range(5):
            y = int(target[b, t])
            if y == PAD_ID:
                continue
            nll = -logp[b, t, y]
            uniform = -logp[b, t].mean()  # cross-entropy against the uniform distribution
            manual += (1 - smoothing) * nll + smoothing * uniform
    got = label_smoothed_loss(logits, target, smoothing)
    torch.testing.assert_close(got, torch.as_tensor(manual, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    # what the model predicts at padded positions does not matter
    noisy = logits.clone()
    noisy[target == PAD_ID] = torch.randn(int((target == PAD_ID).sum()), V) * 100
    torch.testing.assert_close(label_smoothed_loss(noisy, target, smoothing), got)
    # the loss of one sentence alone equals its share of the batch
    alone = label_smoothed_loss(logits[1:2, :2], target[1:2, :2], smoothing)
    parts = [label_smoothed_loss(logits[i : i + 1], target[i : i + 1], smoothing) for i in range(3)]
    torch.testing.assert_close(parts[1], alone)
    torch.testing.assert_close(sum(parts), got)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name: str, cls: type) -> None:
    cfg = config_from_dict(recipe(train={"optimizer": name, "lr": 2e-3, "betas": [0.8, 0.9], "eps": 1e-7,
                                         "weight_decay": 0.01}))
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (2e-3, (0.8, 0.9), 1e-7, 0.01)
    assert len(group["params"]) == 2
    assert group["fused"] is True  # one fused kernel on CPU too (2.5x the foreach step, see benchmarks)


def lrs_per_update(schedule: str, steps: int, **train) -> list[float]:
    """The learning rate that update k = 1..steps uses, driving build_scheduler like the trainer."""
    cfg = config_from_dict(recipe(train={"schedule": schedule, "lr": 1.0, "max_steps": steps, **train}))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=cfg.train.lr)
    scheduler, plateau = build_scheduler(opt, cfg)
    assert plateau is None
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_inverse_sqrt_schedule() -> None:
    w = 4
    got = lrs_per_update("inverse_sqrt", 40, warmup=w)
    expected = [min(k / w, math.sqrt(w / k)) for k in range(1, 41)]  # Vaswani et al.: linear, then 1/sqrt
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[w - 1] == pytest.approx(1.0)  # the peak is reached at update `warmup`
    assert got[35] == pytest.approx(math.sqrt(w / 36))
    no_warmup = lrs_per_update("inverse_sqrt", 9, warmup=0)
    assert no_warmup == pytest.approx([1 / math.sqrt(k) for k in range(1, 10)])


def test_constant_schedule() -> None:
    assert lrs_per_update("constant", 10, warmup=4) == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7)
    assert lrs_per_update("constant", 5, warmup=0) == pytest.approx([1.0] * 5)
    assert lrs_per_update("constant", 4, warmup=1) == pytest.approx([1.0] * 4)


def test_cosine_schedule() -> None:
    w, n, low = 4, 24, 0.1
    got = lrs_per_update("cosine", n, warmup=w, min_lr=low)
    assert got[:w] == pytest.approx([k / w for k in range(1, w + 1)])
    T = n - w
    cosine = [low + (1 - low) * (1 + math.cos(math.pi * (k - 1 - w) / T)) / 2 for k in range(w + 1, n + 1)]
    assert got[w:] == pytest.approx(cosine, rel=1e-9)
    assert all(a >= b for a, b in zip(got[w:], got[w + 1 :]))  # decays monotonically ...
    assert low < got[-1] < 0.15  # ... towards min_lr


def test_cosine_to_a_horizon_fixed_during_the_warm_up() -> None:
    """train.horizon=minutes: the warm-up does not depend on the horizon; once it is fixed, the rates
    are schedule=cosine's over max_steps = the horizon, then min_lr; the horizon travels in the
    scheduler's state (a checkpoint read with weights_only=True) and is capped at max_steps."""
    w, n, low = 4, 24, 0.1
    cfg = config_from_dict(recipe(train={"schedule": "cosine", "horizon": "minutes", "max_minutes": 1.0, "lr": 1.0,
                                         "warmup": w, "min_lr": low, "max_steps": 1000}))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    scheduler, plateau = build_scheduler(opt, cfg)
    assert plateau is None
    got = []
    for k in range(1, n + 6):
        if k == 3:
            scheduler.lr_lambdas[0].fix(n)
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert got[:n] == pytest.approx(lrs_per_update("cosine", n, warmup=w, min_lr=low), rel=1e-12)
    assert got[n:] == pytest.approx([low] * 5)  # past the horizon: the floor
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh, _ = build_scheduler(fresh_opt, cfg)
    assert fresh.lr_lambdas[0].steps is None
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.lr_lambdas[0].steps == n
    capped, _ = build_scheduler(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg)
    capped.lr_lambdas[0].fix(5000)
    assert capped.lr_lambdas[0].steps == 1000


@pytest.mark.parametrize("train", [{"schedule": "inverse_sqrt", "max_minutes": 5}, {"schedule": "cosine"}])
def test_horizon_minutes_needs_cosine_and_a_time_budget(train: dict) -> None:
    with pytest.raises(MTError, match="train.horizon=minutes needs"):
        config_from_dict(recipe(train={"horizon": "minutes", **train}))


class ClockedTrainer(Trainer):
    """A trainer whose clock advances `seconds_per_step` per update this process makes, so that the
    horizon's timing and max_minutes are exact."""

    HORIZON_SKIP, HORIZON_STEPS = 2, 4
    seconds_per_step = 0.5

    def _plan_horizon(self, state) -> None:
        self.first_step = state.progress.step
        super()._plan_horizon(state)

    def clock(self) -> float:
        if not hasattr(self, "first_step"):  # before training (the start of max_minutes)
            return 0.0
        return self.seconds_per_step * (self.state.progress.step - self.first_step)


def test_horizon_minutes_decays_over_the_steps_the_budget_holds(tmp_path: Path) -> None:
    """Updates 2-6 take 2 s (0.5 s each), 15 s of the 18 are left at update 6: the learning rate
    decays to step 6 + 30 = 36, recorded in meta.json, where the run ends; a run resumed from step
    12 (whose own timing would give 12 + 6 + 30 = 48) keeps 36 and ends with the same weights."""
    rec = recipe(train={"schedule": "cosine", "horizon": "minutes", "max_minutes": 0.3, "max_steps": 1000,
                        "warmup": 8, "save_every": 4, "valid_every": 12, "keep_last": 20, "log_every": 1})
    run = tmp_path / "run"
    summary = ClockedTrainer(config_from_dict(rec), run).train()
    assert summary["step"] == 36
    meta = json.loads((run / "meta.json").read_text())
    assert meta["horizon"]["steps"] == 36 and meta["horizon"]["timed"] == [2, 6]
    assert meta["horizon"]["steps_per_s"] == pytest.approx(2.0)
    lrs = [r["lr"] for r in records(run) if "lr" in r]
    assert len(lrs) == 36
    assert lrs[:8] == pytest.approx([3e-3 * k / 8 for k in range(1, 9)])  # the warm-up
    assert all(a > b for a, b in zip(lrs[8:], lrs[9:]))  # then the cosine, down to ...
    assert lrs[-1] == pytest.approx(3e-3 * (1 + math.cos(math.pi * 27 / 28)) / 2)  # ... just above 0 at 36

    again = tmp_path / "again"
    shutil.copytree(run, again)
    for ckpt in (again / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 12:
            shutil.rmtree(ckpt)
    (again / "checkpoints" / "latest").write_text("step_00000012\n")
    resumed = ClockedTrainer(config_from_dict(rec), again, resume=True).train()
    assert resumed["step"] == 36
    assert json.loads((again / "meta.json").read_text())["horizon"]["steps"] == 36
    assert_same_weights(run / "checkpoints" / "step_00000036" / "model.safetensors",
                        again / "checkpoints" / "step_00000036" / "model.safetensors")


def test_plateau_schedule_drops_after_patience_bad_validations() -> None:
    cfg = config_from_dict(recipe(train={"schedule": "plateau", "lr": 1.0, "warmup": 2, "metric": "bleu",
                                         "plateau_patience": 2, "plateau_factor": 0.5, "min_lr": 0.2}))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    scheduler, plateau = build_scheduler(opt, cfg)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    lrs = []
    for _ in range(3):  # warmup, then constant
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0])
    # torch semantics: `patience` bad validations are tolerated, the next one lowers the rate
    after = []
    for score in [10, 20, 19, 20, 18, 25, 1, 1, 1, 1, 1, 1, 1, 1, 1]:
        plateau.step(score)
        scheduler.step()  # a later update must not undo the reduction
        after.append(opt.param_groups[0]["lr"])
    assert after == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2])
    # metric=loss: lower is better
    cfg = config_from_dict(recipe(train={"schedule": "plateau", "lr": 1.0, "warmup": 0, "metric": "loss",
                                         "plateau_patience": 0}))
    opt = torch.optim.Adam([param], lr=1.0)
    _, plateau = build_scheduler(opt, cfg)
    plateau.step(5.0)
    plateau.step(4.0)
    assert opt.param_groups[0]["lr"] == 1.0
    plateau.step(4.5)
    assert opt.param_groups[0]["lr"] == 0.5


# ----------------------------------------------------------------------------------------------
# one update: clipping and gradient accumulation


def _update_setup(world: World | None = None, **train):
    """One process's TrainStep (on the CPU unless `world` says otherwise), a tiny model and 5 pairs."""
    cfg = config_from_dict(recipe(model={"dropout": 0.0}, train=train))
    step = TrainStep(cfg.train, world or World(torch.device("cpu")))
    torch.manual_seed(3)
    model = build_model(cfg.model, 30, 30)
    g = torch.Generator().manual_seed(5)
    lengths = [(5, 7), (3, 2), (9, 6), (4, 4), (2, 8)]
    src = [torch.randint(4, 30, (s,), generator=g).tolist() for s, _ in lengths]
    tgt = [torch.randint(4, 30, (t,), generator=g).tolist() for _, t in lengths]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return step, model, src, tgt, scaler


def test_fp16_is_refused_off_cuda() -> None:
    cfg = config_from_dict(recipe(train={"amp": "fp16"}))
    with pytest.raises(MTError, match="train.amp=fp16 needs a CUDA device"):
        TrainStep(cfg.train, World(torch.device("cpu")))


def test_a_single_process_world(monkeypatch) -> None:
    """Without torchrun's WORLD_SIZE: rank 0 of 1 on train.device, its collective calls pass values through."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = World.from_env("cpu")
    assert (world.rank, world.size, world.is_main, world.device) == (0, 1, True, torch.device("cpu"))
    assert world.agree(True) and not world.agree(False)
    assert float(world.total(7)) == 7.0
    t = torch.tensor([1.0, 2.0])
    [gathered] = world.gather(t)
    assert gathered is t
    model = torch.nn.Linear(2, 2)
    assert world.distribute(model) is model


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_gradient_accumulation_equals_one_update_on_the_union() -> None:
    # Adam's eps is raised so that parameters whose true gradient is zero (attention key biases: the
    # softmax ignores them) do not turn float noise into full-size steps of random sign
    train = {"clip_norm": 0.0, "eps": 1e-4}
    step, model, src, tgt, scaler = _update_setup(**train)
    first, second, union = collate(src[:2], tgt[:2]), collate(src[2:], tgt[2:]), collate(src, tgt)
    start = _params(model)
    for make_opt, atol in [(lambda m: torch.optim.SGD(m.parameters(), lr=0.5), 1e-6),
                           (lambda m: build_optimizer(m, config_from_dict(recipe(train=train)), torch.device("cpu")), 1e-6)]:
        accum, whole = copy.deepcopy(model), copy.deepcopy(model)
        loss_a, tok_a, stepped_a = step(accum, make_opt(accum), scaler, [first, second])
        loss_w, tok_w, stepped_w = step(whole, make_opt(whole), scaler, [union])
        assert tok_a == tok_w == union.ntokens and stepped_a and stepped_w
        assert float(loss_a) == pytest.approx(float(loss_w), rel=1e-5)
        moved = False
        for p0, pa, pw in zip(start, accum.parameters(), whole.parameters()):
            torch.testing.assert_close(pa.detach(), pw.detach(), rtol=0, atol=atol)
            moved |= not torch.equal(p0, pa.detach())
            assert pa.grad is None  # gradients are cleared after the update
        assert moved


def _ddp_update_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        step, model, src, tgt, scaler = _update_setup(World(torch.device("cpu"), rank=rank, size=2), clip_norm=0.0)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        rows = [0, 1] if rank == 0 else [2, 3, 4]  # the replicas see different numbers of tokens
        batch = collate([src[i] for i in rows], [tgt[i] for i in rows])
        step(ddp, torch.optim.SGD(model.parameters(), lr=1.0), scaler, [batch])
        torch.save({n: p.detach() for n, p in model.named_parameters()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_update_weighs_every_token_the_same(tmp_path: Path) -> None:
    """Two replicas with 2 and 3 sentences make the same update as one process on all 5: the loss
    is divided by the tokens of all replicas, not each by its own."""
    torch.multiprocessing.spawn(_ddp_update_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    step, model, src, tgt, scaler = _update_setup(clip_norm=0.0)
    union = collate(src, tgt)
    first, rest = collate(src[:2], tgt[:2]), collate(src[2:], tgt[2:])
    assert first.ntokens != rest.ntokens  # otherwise per-replica normalisation would give the same
    step(model, torch.optim.SGD(model.parameters(), lr=1.0), scaler, [union])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=1e-6, msg=f"rank {rank}: {name}")


def test_gradient_clipping() -> None:
    batch_args = None
    changes = {}
    for clip in (0.0, 1e-3):
        step, model, src, tgt, scaler = _update_setup(clip_norm=clip)
        batch_args = collate(src, tgt)
        if clip == 0.0:  # the true gradient norm, for comparison
            probe = copy.deepcopy(model)
            loss = label_smoothed_loss(probe(batch_args.src, batch_args.src_lengths, batch_args.tgt_in),
                                       batch_args.tgt_out, step.train.label_smoothing)
            (loss / batch_args.ntokens).backward()
            grad_norm = torch.norm(torch.stack([p.grad.norm() for p in probe.parameters() if p.grad is not None]))
        start = _params(model)
        step(model, torch.optim.SGD(model.parameters(), lr=1.0), scaler, [batch_args])
        changes[clip] = torch.norm(torch.stack([(p.detach() - p0).norm() for p0, p in zip(start, model.parameters())]))
    assert grad_norm > 1e-2
    assert float(changes[0.0]) == pytest.approx(float(grad_norm), rel=1e-4)  # SGD lr 1: change == gradient
    assert float(changes[1e-3]) == pytest.approx(1e-3, rel=1e-3)  # clipped to clip_norm


# ----------------------------------------------------------------------------------------------
# seeds


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    short = {"max_steps": 6, "save_every": 6, "log_every": 6}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train_here(tmp_path / name, data={"synthetic_valid": 0}, train={**short, "seed": seed})
    final = "checkpoints/step_00000006/model.safetensors"
    assert_same_weights(tmp_path / "a" / final, tmp_path / "b" / final)
    wa, wc = weights(tmp_path / "a" / final), weights(tmp_path / "c" / final)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    # no validation set: model.safetensors holds the latest weights
    assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "a" / final)


# ----------------------------------------------------------------------------------------------
# a finished run: layout, metrics, best and last-k, averaging


def test_run_directory_layout(finished_run: Path) -> None:
    names = sorted(p.name for p in finished_run.iterdir())
    assert names == ["checkpoints", "config.yaml", "meta.json", "metrics.jsonl", "model.safetensors", "prepared",
                     "spm.model"]
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["latest", "step_00000020",
                                                                                 "step_00000024"]
    assert (finished_run / "checkpoints" / "latest").read_text().strip() == "step_00000024"
    for ckpt in (finished_run / "checkpoints").glob("step_*"):
        assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "model.safetensors", "trainer_state.pt"]
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert cfg["train"]["max_steps"] == 24 and cfg["model"]["d_model"] == 32
    assert cfg["train"]["label_smoothing"] == 0.1  # defaults are written out
    state = torch.load(finished_run / "checkpoints" / "step_00000024" / "trainer_state.pt", weights_only=True)
    assert set(state) >= {"progress", "optimizer", "scheduler", "rng", "scaler"}
    assert state["progress"]["step"] == 24
    assert leftovers(finished_run) == []


def test_metrics_have_training_and_validation_records(finished_run: Path) -> None:
    recs = records(finished_run)
    train = [r for r in recs if "loss" in r and "valid" not in r]
    valid = [r for r in recs if "valid" in r]
    assert [r["step"] for r in train] == [4, 8, 12, 16, 20, 24]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(3e-3)  # update 4 = end of warmup
    assert train[-1]["lr"] == pytest.approx(3e-3 * math.sqrt(4 / 24))
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in valid] == [8, 16, 24]
    signatures = []
    for metric in (sacrebleu.BLEU(), sacrebleu.CHRF()):  # what sacrebleu itself reports, defaults throughout
        metric.corpus_score(["a b c"], [["a b c"]])
        signatures.append(metric.get_signature().format())
    bleu_sig, chrf_sig = signatures
    for r in valid:
        v = r["valid"]
        assert v["ppl"] == pytest.approx(math.exp(v["loss"]))
        assert 0 <= v["bleu"] <= 100 and 0 <= v["chrf"] <= 100
        assert v["bleu_signature"] == bleu_sig and v["chrf_signature"] == chrf_sig
        assert v["sentences"] == 12 and v["search"] == "greedy"
    assert valid[-1]["valid"]["loss"] < valid[0]["valid"]["loss"]


def test_best_checkpoint_is_model_safetensors(finished_run: Path) -> None:
    valid = [r for r in records(finished_run) if "valid" in r]
    assert valid[0]["best"] is True
    best = [r for r in valid if r["best"]][-1]
    meta = json.loads((finished_run / "meta.json").read_text())
    assert meta["best_step"] == best["step"] and meta["step"] == 24
    assert meta["best_score"] == best["valid"]["bleu"] and meta["metric"] == "bleu"
    assert meta["best_valid"]["bleu_signature"].startswith("nrefs:1|")
    with safe_open(str(finished_run / "model.safetensors"), "pt") as f:
        assert f.metadata()["step"] == str(best["step"])
    if best["step"] == 24:
        assert_same_weights(finished_run / "model.safetensors",
                            finished_run / "checkpoints" / "step_00000024" / "model.safetensors")


def test_mt_average_is_the_elementwise_mean(finished_run: Path, tmp_path: Path) -> None:
    from mt.cli.average import average

    out = tmp_path / "avg.safetensors"
    average(finished_run, last=2, output=out)
    a = weights(finished_run / "checkpoints" / "step_00000020" / "model.safetensors")
    b = weights(finished_run / "checkpoints" / "step_00000024" / "model.safetensors")
    avg = weights(out)
    assert avg.keys() == a.keys()
    for k in a:
        assert torch.equal(avg[k], ((a[k].double() + b[k].double()) / 2).to(a[k].dtype))
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["averaged"] == "step_00000020,step_00000024"
    assert not any(torch.equal(avg[k], b[k]) for k in a if a[k].dtype.is_floating_point and not torch.equal(a[k], b[k]))


# ----------------------------------------------------------------------------------------------
# early stopping and plateau with scripted validation scores


def _scripted(monkeypatch, metric: str, scores: list[float]) -> None:
    it = iter(scores)

    def validate(self, model=None) -> dict:
        s = float(next(it))
        return {"loss": s if metric == "loss" else 3.0, "ppl": 1.0, "bleu": s if metric == "bleu" else 1.0,
                "chrf": 1.0, "bleu_signature": "x", "chrf_signature": "x", "sentences": 1, "search": "greedy"}

    monkeypatch.setattr(Trainer, "validate", validate)


@pytest.mark.parametrize("metric, scores", [("bleu", [10, 20, 15, 15, 15, 15]), ("loss", [5, 4, 4.5, 4.5, 4.5, 4.5])])
def test_early_stopping_plateau_and_best(tmp_path: Path, monkeypatch, metric: str, scores: list[float]) -> None:
    _scripted(monkeypatch, metric, scores)
    run = tmp_path / "run"
    summary = train_here(run, train={"metric": metric, "patience": 3, "schedule": "plateau", "warmup": 0,
                                     "plateau_patience": 1, "plateau_factor": 0.5, "valid_every": 2,
                                     "save_every": 2, "keep_last": 10, "log_every": 1, "max_steps": 30})
    # validations at 2 (best), 4 (best), 6, 8, 10 (three without improvement: stop)
    assert summary["stop"] == "early_stop" and summary["step"] == 10
    assert summary["best_step"] == 4 and summary["best_score"] == scores[1]
    valid = [r for r in records(run) if "valid" in r]
    assert [(r["step"], r["best"]) for r in valid] == [(2, True), (4, True), (6, False), (8, False), (10, False)]
    lrs = {r["step"]: r["lr"] for r in records(run) if "lr" in r}
    # plateau_patience 1: the second bad validation (step 8) halves the rate from update 9 on
    assert [lrs[k] for k in range(1, 11)] == pytest.approx([3e-3] * 8 + [1.5e-3] * 2)
    assert_same_weights(run / "model.safetensors", run / "checkpoints" / "step_00000004" / "model.safetensors")
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["best_step"], meta["best_score"], meta["step"]) == (4, scores[1], 10)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000010"


def test_last_step_is_validated_once(tmp_path: Path, monkeypatch) -> None:
    """max_steps on a validation step that is no save step: the final save must not validate again."""
    _scripted(monkeypatch, "bleu", [5, 5])  # a third call would raise StopIteration
    run = tmp_path / "run"
    summary = train_here(run, train={"valid_every": 4, "save_every": 3, "max_steps": 8, "patience": 2})
    assert summary["stop"] == "max_steps" and summary["step"] == 8
    assert [(r["step"], r["best"]) for r in records(run) if "valid" in r] == [(4, True), (8, False)]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000008"


def test_resume_keeps_a_best_model_newer_than_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A validation improved after the last checkpoint, then the run died: after the resume, a
    validation worse than that best must not replace model.safetensors."""
    _scripted(monkeypatch, "bleu", [10, 12, 20])
    run = tmp_path / "run"
    train_here(run, train={"valid_every": 2, "save_every": 4, "max_steps": 6, "keep_last": 10})
    best = weights(run / "model.safetensors")
    # the state of a run killed between step 6's validation and its checkpoint
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    assert json.loads((run / "meta.json").read_text())["best_step"] == 6
    _scripted(monkeypatch, "bleu", [15, 20, 21])  # replayed step 6 scores 15 this time
    summary = train_here(run, resume=True, train={"valid_every": 2, "save_every": 4, "max_steps": 6,
                                                  "keep_last": 10})
    assert (summary["best_step"], summary["best_score"]) == (6, 20)
    after = weights(run / "model.safetensors")
    assert all(torch.equal(best[k], after[k]) for k in best)
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["best_step"], meta["best_score"]) == (6, 20)
    # the replay of the best validation with the same score counts as that best (not as a bad one)
    run2 = tmp_path / "run2"
    _scripted(monkeypatch, "bleu", [10, 12, 20])
    train_here(run2, train={"valid_every": 2, "save_every": 4, "max_steps": 6, "keep_last": 10})
    shutil.rmtree(run2 / "checkpoints" / "step_00000006")
    (run2 / "checkpoints" / "latest").write_text("step_00000004\n")
    _scripted(monkeypatch, "bleu", [20])
    train_here(run2, resume=True, train={"valid_every": 2, "save_every": 4, "max_steps": 6, "keep_last": 10})
    assert [(r["step"], r["best"]) for r in records(run2) if "valid" in r] == [(2, True), (4, True), (6, True)]


def test_resume_counts_patience_from_the_checkpoint_not_from_a_newer_best(tmp_path: Path, monkeypatch) -> None:
    """Checkpoint at 4, best model at 8, then a crash: the replayed validation at 6 beats the
    checkpoint's best but not the one on disk. It must not count as a bad validation (the run
    without the crash did not stop there), nor replace the better model."""
    train = {"valid_every": 2, "save_every": 4, "max_steps": 8, "keep_last": 10, "patience": 1}
    _scripted(monkeypatch, "bleu", [10, 12, 15, 20])
    run = tmp_path / "run"
    train_here(run, train=train)
    best = weights(run / "model.safetensors")
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    _scripted(monkeypatch, "bleu", [14, 19, 21])  # the replay scores a little lower at 6 and 8
    summary = train_here(run, resume=True, train={**train, "max_steps": 10})
    assert summary["stop"] == "max_steps" and summary["step"] == 10
    assert [(r["step"], r["best"]) for r in records(run) if "valid" in r] == [
        (2, True), (4, True), (6, False), (8, False), (10, True)]
    assert (summary["best_step"], summary["best_score"]) == (10, 21)
    assert not all(torch.equal(best[k], v) for k, v in weights(run / "model.safetensors").items())


def test_skipped_fp16_update_does_not_advance_the_schedule() -> None:
    step, model, src, tgt, _ = _update_setup()
    batch = collate(src, tgt)
    start = _params(model)
    # an fp16 overflow: one gradient turns inf, GradScaler skips the update and lowers its scale
    overflow = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hook = next(model.parameters()).register_hook(lambda g: g * float("inf"))
    loss, ntok, stepped = step(model, torch.optim.SGD(model.parameters(), lr=1.0), overflow, [batch])
    hook.remove()
    assert not stepped and overflow.get_scale() < 1024.0
    assert all(torch.equal(p0, p.detach()) for p0, p in zip(start, model.parameters()))
    assert math.isfinite(float(loss)) and ntok == batch.ntokens
    fine = torch.amp.GradScaler("cpu", init_scale=1.0)
    _, _, stepped = step(model, torch.optim.SGD(model.parameters(), lr=1.0), fine, [batch])
    assert stepped and not all(torch.equal(p0, p.detach()) for p0, p in zip(start, model.parameters()))


def test_sentences_longer_than_the_model_positions(tmp_path: Path) -> None:
    """Training pairs the Transformer has no positions for are skipped; validation still scores all."""
    run = tmp_path / "run"
    summary = train_here(run, model={"max_positions": 24}, train={"max_steps": 2, "valid_every": 2})
    assert summary["step"] == 2
    [valid] = [r["valid"] for r in records(run) if "valid" in r]
    assert valid["sentences"] == 12 and valid["loss"] > 0


# ----------------------------------------------------------------------------------------------
# fine-tuning


def test_init_from_starts_from_the_parent_weights(finished_run: Path, tmp_path: Path) -> None:
    one = {"max_steps": 1, "log_every": 1, "save_every": 1}
    fresh = train_here(tmp_path / "fresh", data={"synthetic_valid": 0}, train=one)
    child = train_here(tmp_path / "child", data={"synthetic_valid": 0}, train={**one, "init_from": str(finished_run)})
    assert fresh["step"] == child["step"] == 1
    fresh_loss = records(tmp_path / "fresh")[0]["loss"]
    child_loss = records(tmp_path / "child")[0]["loss"]
    parent_losses = [r["loss"] for r in records(finished_run) if "lr" in r]
    assert child_loss < fresh_loss - 0.3  # deterministic: about 4.5 against 5.2
    assert parent_losses[-1] - 0.1 < child_loss < parent_losses[0]  # it goes on where the parent stopped
    assert (tmp_path / "child" / "spm.model").read_bytes() == (finished_run / "spm.model").read_bytes()
    # a model.safetensors file inside a run works too
    train_here(tmp_path / "child2", data={"synthetic_valid": 0},
               train={**one, "init_from": str(finished_run / "model.safetensors")})
    assert records(tmp_path / "child2")[0]["loss"] == pytest.approx(child_loss)


@pytest.mark.parametrize("vocab", [{"size": 120}, {"joint": False}, {"model_type": "bpe"}])
def test_init_from_with_another_vocabulary_is_a_clear_error(finished_run: Path, tmp_path: Path, vocab: dict) -> None:
    with pytest.raises(MTError, match="vocabulary differs"):
        train_here(tmp_path / "child", vocab=vocab, train={"init_from": str(finished_run), "max_steps": 1})


def test_init_from_errors(finished_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MTError, match="not a run directory"):
        train_here(tmp_path / "a", train={"init_from": str(tmp_path / "empty"), "max_steps": 1})
    with pytest.raises(MTError, match="does not fit"):
        train_here(tmp_path / "b", model={"d_model": 16}, train={"init_from": str(finished_run), "max_steps": 1})


# ----------------------------------------------------------------------------------------------
# resume in this process: leftovers of a killed process, malicious trainer state


def test_resume_cleans_half_written_temp_checkpoint(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    half = run / "checkpoints" / ".step_00000028.k1ll3d"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 100)
    (run / ".metrics.jsonl.x7.tmp").write_text('{"step": 2')
    (run / "checkpoints" / ".latest.q9.tmp").write_text("step_000")
    # nothing left to train: the resume only tidies up
    assert train_here(run, resume=True)["step"] == 24
    assert leftovers(run) == []
    half.mkdir()
    summary = train_here(run, resume=True, train={"max_steps": 28})
    assert summary["step"] == 28
    assert leftovers(run) == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000024", "step_00000028"]
    assert [r["step"] for r in records(run) if "lr" in r] == [4, 8, 12, 16, 20, 24, 28]


class _Evil:
    """Unpickling this would create a file (and could do anything else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_malicious_trainer_state(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    evil = _Evil(marker)
    torch.save({"progress": evil, "rng": evil}, run / "checkpoints" / "step_00000024" / "trainer_state.pt")
    with pytest.raises(MTError, match="trainer_state.pt: not a readable trainer state"):
        train_here(run, resume=True, train={"max_steps": 28})
    assert not marker.exists()


def test_fresh_run_refuses_a_used_run_directory(finished_run: Path) -> None:
    with pytest.raises(MTError, match="already holds files"):
        train_here(finished_run)


# ----------------------------------------------------------------------------------------------
# subprocesses: exact resume after SIGKILL, DDP


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MT_", "OMP_", "MKL_"))}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MT_DEBUG": "1", **extra})
    return env


def _start(args: list[str], log: Path, cmd: list[str] | None = None, **env: str) -> subprocess.Popen:
    out = open(log, "ab")
    cmd = cmd or [sys.executable, "-m", "mt.cli.main", "train"]
    proc = subprocess.Popen(cmd + args, stdout=out, stderr=subprocess.STDOUT, env=_env(**env), cwd=log.parent)
    out.close()
    return proc


def _wait_for(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 240) -> bool:
    """Poll until condition() (True) or the process exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            # exited (say, it ran to its end while this process was not scheduled): nothing left to kill;
            # True here would make the caller record a kill of a finished run
            return False
        time.sleep(0.001)
    proc.kill()
    raise AssertionError("timed out")


def _latest_step(run: Path) -> int:
    try:
        return int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


def _valid_steps(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "valid" in r:
            out.append(r["step"])
    return out


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"exit {rc}:\n{log.read_text()[-8000:]}"


def _two_weighted_corpora(folder: Path) -> Path:
    """A prepared directory of two synthetic corpora, the small one weighted 3 (sampled per epoch)."""
    from mt.data import synthetic
    from mt.data.prepare import prepare

    train = []
    for name, n, seed, weight in (("big", 90, 11, 1.0), ("small", 30, 12, 3.0)):
        pairs = synthetic.generate(n, seed=seed, max_clauses=1)
        for side, lines in (("src", [s for s, _ in pairs]), ("tgt", [t for _, t in pairs])):
            (folder / f"{name}.{side}").write_text("".join(line + "\n" for line in lines))
        train.append({"src": str(folder / f"{name}.src"), "tgt": str(folder / f"{name}.tgt"), "weight": weight})
    cfg = config_from_dict(recipe(data={"corpus": "files", "train": train, "max_ratio": 0}))
    prepare(cfg, folder / "prepared", log=lambda msg: None)
    return folder / "prepared"


@pytest.mark.parametrize("data", ["auto", "prepared-weighted"])
def test_killed_run_resumes_to_bitwise_identical_weights(tmp_path: Path, data: str) -> None:
    """SIGKILL at three different moments, resume each time; the result equals an uninterrupted run.
    auto: the recipe's corpus, prepared into the run directory by the first start; prepared-weighted:
    a prepared directory of two corpora with weights (each epoch samples its pairs)."""
    extra = {"data": {"prepared": str(_two_weighted_corpora(tmp_path))}} if data == "prepared-weighted" else {}
    rec = recipe(train={"accum": 2, "max_steps": 24}, **extra)  # 48 batches, ~25-30 per epoch: crosses an epoch
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(rec))
    a_run, b_run = tmp_path / "A", tmp_path / "B"
    a = _start(["recipe.yaml", "--run-dir", str(a_run)], tmp_path / "A.log")  # both start together
    b = _start(["recipe.yaml", "--run-dir", str(b_run)], tmp_path / "B.log")
    kills = []

    # 1. right after the first checkpoint appears
    assert _wait_for(b, lambda: _latest_step(b_run) > 0), (tmp_path / "B.log").read_text()
    b.send_signal(signal.SIGKILL)
    b.wait()
    kills.append(("after first checkpoint", _latest_step(b_run)))

    # 2. once past step 12: while the next checkpoint folder is being written (or, failing to catch
    #    that, just after it landed)
    b = _start(["--resume", str(b_run)], tmp_path / "B.log")
    ckpts = b_run / "checkpoints"
    if _wait_for(b, lambda: _latest_step(b_run) >= 12 and (any(ckpts.glob(".step_*")) or _latest_step(b_run) > 12)):
        b.send_signal(signal.SIGKILL)
        b.wait()
        kills.append(("during checkpoint write", _latest_step(b_run)))

    # 3. right after the next validation was logged (best model written, its checkpoint not yet)
    if b.returncode is not None and b.returncode < 0:
        resumed_at = _latest_step(b_run)
        b = _start(["--resume", str(b_run)], tmp_path / "B.log")
        if _wait_for(b, lambda: any(s > resumed_at for s in _valid_steps(b_run))):
            b.send_signal(signal.SIGKILL)
            b.wait()
            kills.append(("after validation", _latest_step(b_run)))

    if b.returncode is not None and b.returncode < 0:
        b = _start(["--resume", str(b_run)], tmp_path / "B.log")
    _finish(b, tmp_path / "B.log")
    _finish(a, tmp_path / "A.log")
    print("kills (moment, latest checkpoint):", kills)
    assert len(kills) >= 2, kills
    assert all(0 < step < 24 for _, step in kills), kills

    assert _latest_step(a_run) == _latest_step(b_run) == 24
    for name in ("checkpoints/step_00000024/model.safetensors", "checkpoints/step_00000020/model.safetensors",
                 "model.safetensors"):
        assert_same_weights(a_run / name, b_run / name)
    state_a = torch.load(a_run / "checkpoints/step_00000024/trainer_state.pt", weights_only=True)
    state_b = torch.load(b_run / "checkpoints/step_00000024/trainer_state.pt", weights_only=True)
    assert state_a["progress"] == state_b["progress"]
    assert state_a["progress"]["epoch"] >= 1
    assert torch.equal(state_a["rng"]["torch"], state_b["rng"]["torch"])
    exp_a, exp_b = state_a["optimizer"]["state"], state_b["optimizer"]["state"]
    assert all(torch.equal(exp_a[i]["exp_avg_sq"], exp_b[i]["exp_avg_sq"]) for i in exp_a)
    # the same validations, once each, with the same results
    valid_a = [r for r in records(a_run) if "valid" in r]
    valid_b = [r for r in records(b_run) if "valid" in r]
    assert [r["step"] for r in valid_b] == [8, 16, 24]
    assert valid_a == valid_b
    assert [r["step"] for r in records(b_run) if "lr" in r] == [4, 8, 12, 16, 20, 24]
    assert json.loads((a_run / "meta.json").read_text())["best_step"] == json.loads((b_run / "meta.json").read_text())["best_step"]
    assert leftovers(b_run) == []


AUDIT_LAUNCHER = '''
import json, os, sys
rank = int(os.environ["RANK"])
run_dir = os.path.abspath(sys.argv[sys.argv.index("--run-dir") + 1]) + os.sep
# one JSON line per write, as it happens: a distributed worker leaves with os._exit (see mt.cli.main)
log = open(os.path.join(os.environ["AUDIT_DIR"], f"rank{rank}.jsonl"), "w", buffering=1)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(mode, str):
            if not any(c in mode for c in "wax+"):
                return
        elif not (flags or 0) & WRITE_FLAGS:
            return
    elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree",
                       "os.symlink", "os.link", "os.chmod"):
        return
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)):
        path = os.fsdecode(path)
        if os.path.abspath(path).startswith(run_dir) or os.path.abspath(path) + os.sep == run_dir:
            log.write(json.dumps([event, path]) + "\\n")

sys.addaudithook(hook)
sys.argv = ["mt"] + sys.argv[1:]
from mt.cli.main import main
main()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_train(tmp_path: Path, rec: dict, timeout: float = 300) -> tuple[Path, str]:
    """`mt train` under torchrun, two CPU processes (gloo); returns the run folder and the log."""
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(rec))
    (tmp_path / "launch.py").write_text(AUDIT_LAUNCHER)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(tmp_path / "launch.py"), "train"]
    log = tmp_path / "ddp.log"
    proc = _start(["recipe.yaml", "--run-dir", str(run)], log, cmd=cmd, MT_DIST_BACKEND="gloo",
                  AUDIT_DIR=str(tmp_path), GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    try:
        _finish(proc, log, timeout)
    finally:
        if proc.poll() is None:  # a hang: the ranks disagree on the collective calls
            proc.kill()
            proc.wait()
    return run, log.read_text()


def test_ddp_gloo_two_processes(tmp_path: Path) -> None:
    rec = recipe(train={"accum": 2, "max_steps": 8, "valid_every": 4, "save_every": 4, "log_every": 2})
    run, text = _ddp_train(tmp_path, rec)
    assert text.count("done at step 8") == 1, text[-3000:]  # only rank 0 speaks
    recs = records(run)
    final = recs[-1]
    assert final["replicas"] == 2 and final["replicas_identical"] is True
    assert final["checksums"][0] == final["checksums"][1]
    assert [r["step"] for r in recs if "valid" in r] == [4, 8]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "meta.json", "metrics.jsonl",
                                                      "model.safetensors", "prepared", "spm.model"]
    rank0 = [json.loads(line) for line in (tmp_path / "rank0.jsonl").read_text().splitlines()]
    rank1 = [json.loads(line) for line in (tmp_path / "rank1.jsonl").read_text().splitlines()]
    assert rank0, "the audit hook saw no writes on rank 0: the check itself is broken"
    assert rank1 == [], f"rank 1 wrote into the run directory: {rank1[:5]}"


def test_ddp_early_stop_on_a_step_without_checkpoint(tmp_path: Path) -> None:
    """Only rank 0 validates; when it stops early on a step that is no save step, every rank must
    still take the same way out (a checkpoint, then the replica check) instead of hanging."""
    # a learning rate too small to change the output: the second validation does not improve
    rec = recipe(train={"max_steps": 40, "valid_every": 2, "save_every": 3, "log_every": 2, "patience": 1,
                        "lr": 1e-12, "schedule": "constant", "warmup": 0})
    run, text = _ddp_train(tmp_path, rec, timeout=240)
    assert text.count("done at step 4 (early_stop)") == 1, text[-3000:]
    assert [(r["step"], r["best"]) for r in records(run) if "valid" in r] == [(2, True), (4, False)]
    final = records(run)[-1]
    assert final["replicas"] == 2 and final["replicas_identical"] is True
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"


@pytest.mark.parametrize("args, code, out, err", [
    (["--version"], 0, "mt ", ""),
    (["translate", "-m", "no/such/run"], 1, "", "mt: error: no/such/run"),
    (["translate", "--beam"], 2, "", "mt: error: "),
])
def test_distributed_worker_exits_with_its_status_and_output(args, code, out, err) -> None:
    """A torchrun worker (WORLD_SIZE > 1) leaves through os._exit, skipping interpreter shutdown:
    what it printed still arrives (even through a pipe's buffer) and the exit status is kept."""
    script = "import atexit, sys; atexit.register(lambda: sys.stderr.write('atexit ran')); from mt.cli.main import main; main()"
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          env=_env(WORLD_SIZE="2", MT_DEBUG="0"))
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith(out) and (out or not proc.stdout)
    assert err in proc.stderr and "atexit ran" not in proc.stderr  # no interpreter shutdown
    plain = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                           env=_env(WORLD_SIZE="1", MT_DEBUG="0"))
    assert plain.returncode == code and "atexit ran" in plain.stderr  # a single process exits normally
