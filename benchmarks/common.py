"""Shared set-up for the speed benchmarks: arguments, data, vocabulary, models, timers, memory,
and the description of the machine that goes into every JSON document.

Not part of the library: the scripts in this folder import it as `common` (they run as
`python benchmarks/NAME.py`, so this folder is on sys.path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mt
from mt.config import RNNConfig, TransformerConfig, VocabConfig
from mt.device import check_precision, cpu_flags, resolve_device
from mt.models import build_model
from mt.models.base import Seq2Seq
from mt.data.text import read_lines
from mt.data.vocab import Vocab, train_vocab

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
DEFAULT_DATA = "../shared/data/multi30k"  # relative to the repository root

#: the two models every benchmark measures (random seeded weights unless trained here)
MODELS: dict[str, Any] = {
    # "base" Transformer (Vaswani et al. 2017): d_model 512, 6+6 layers, 8 heads, ff 2048;
    # joint vocabulary, so source/target embeddings and the output layer are shared
    "transformer": TransformerConfig(
        d_model=512, heads=8, enc_layers=6, dec_layers=6, ff_dim=2048, dropout=0.1, norm="pre",
        share_embeddings=True, tie_output=True,
    ),
    # attention RNN: bidirectional 2-layer GRU encoder, 2-layer GRU decoder, Bahdanau attention
    "rnn": RNNConfig(
        cell="gru", attention="bahdanau", emb_dim=256, hidden=512, enc_layers=2, dec_layers=2,
        bidirectional=True, dropout=0.2,
    ),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quick", action="store_true", help="short run (< 2 minutes on 2 idle cores)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"folder with the Multi30k files (train.{{en,de}}.gz, test_2016_flickr.{{en,de}}.gz); "
                        f"relative paths resolve against the repository root (default {DEFAULT_DATA})")
    p.add_argument("--models", default="transformer,rnn", help="comma-separated subset of: " + ",".join(MODELS))
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    unknown = [m for m in models_arg(args) if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    try:
        return resolve_device(args.device)
    except mt.MTError as e:
        raise SystemExit(f"error: {e}") from None


def check_weights(device: torch.device, dtype: str = "float32", int8: bool = False) -> None:
    """mt's rules for --dtype and --int8 (mt.device.check_precision) on the resolved device."""
    try:
        check_precision(dtype, device.type, int8)
    except mt.MTError as e:
        raise SystemExit(f"error: {e}") from None


def models_arg(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in args.models.split(",") if m.strip()]


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def data_dir(args: argparse.Namespace) -> Path:
    p = Path(args.data)
    return p if p.is_absolute() else ROOT / p


def data_file(args: argparse.Namespace, name: str) -> Path:
    path = data_dir(args) / name
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such file (use --data to point at a Multi30k mirror)")
    return path


# ----------------------------------------------------------------------------------------------
# vocabulary and models


def joint_vocab(args: argparse.Namespace, size: int = 8000) -> Vocab:
    """SentencePiece joint vocabulary (unigram, `size` pieces) trained on Multi30k train en+de,
    cached in benchmarks/.cache/ (keyed by size and the training files' sizes)."""
    en, de = data_file(args, "train.en.gz"), data_file(args, "train.de.gz")
    key = f"{en.stat().st_size}-{de.stat().st_size}"
    model_file = CACHE / f"spm-multi30k-en-de-{size}-{key}.model"
    if model_file.is_file():
        return Vocab(model_file)
    log(f"training the SentencePiece vocabulary ({size} pieces) -> {model_file}")
    return train_vocab(read_lines(en) + read_lines(de), model_file, VocabConfig(size=size, joint=True))


def make_model(name: str, vocab_size: int, seed: int, device: torch.device) -> Seq2Seq:
    torch.manual_seed(seed)
    return build_model(MODELS[name], vocab_size, vocab_size).to(device)


def model_info(name: str, model: Seq2Seq) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(MODELS[name]),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------------------------
# timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    """Hand freed heap back to the OS (gc + glibc malloc_trim) so that the RSS figures of one
    measurement do not carry the heap left over by the previous one."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class Measure:
    """Wall time, process CPU time and peak memory of a block.

    CPU device: peak resident set size of the process. Freed heap is returned to the OS and the
    high-water mark is reset first (`echo 5 > /proc/self/clear_refs`), so the peak belongs to this block; `peak_mib` is the
    peak RSS, `peak_delta_mib` the peak minus the RSS when the block started. Where the reset
    is not possible, resource.ru_maxrss is used (a process-lifetime peak: the delta is then 0
    unless the block set a new record) and `memory_method` says so.
    CUDA device: torch.cuda.max_memory_allocated after reset_peak_memory_stats (the delta is
    over the memory allocated when the block started).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Measure":
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.mem0 = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            release_memory()
            self.method = "VmHWM after clear_refs"
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.method = "ru_maxrss (process lifetime peak)"
            self.mem0 = self._rss_bytes()
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def _rss_bytes(self) -> int:
        if self.method.startswith("VmHWM"):
            return (_proc_status_kib("VmRSS") or 0) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.method.startswith("VmHWM"):
            return (_proc_status_kib("VmHWM") or 0) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.cpu0
        peak = self._peak_bytes()
        self.peak_mib = peak / 2**20
        self.peak_delta_mib = max(peak - self.mem0, 0) / 2**20

    def record(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_mib": round(self.peak_mib, 1),
            "peak_delta_mib": round(self.peak_delta_mib, 1),
        }


# ----------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_flags() -> list[str]:
    """The CPU features that decide matmul speed: AVX2/AVX-512, VNNI (int8), BF16, AMX."""
    have = cpu_flags() or set()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in have]


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "mt_version": mt.__version__,
        "git": _git(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        # the widest vector ISA torch's CPU kernels use here (AVX2, AVX512...): figures from machines
        # with the same model name but another ISA are not comparable (int8 and bf16 least of all)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        # OpenMP settings matter on a shared machine: with more runnable threads than cores, libgomp's
        # default busy-waiting makes small ops 5-10x slower; OMP_WAIT_POLICY=PASSIVE avoids that
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                               "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")},
        "load_average_start": load_average(),
        "time_start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def warn_if_loaded(device: torch.device) -> None:
    load = load_average()
    cores = os.cpu_count() or 1
    if device.type == "cpu" and load and load[0] > cores and os.environ.get("OMP_WAIT_POLICY", "").lower() != "passive":
        log(f"warning: load average {load[0]} > {cores} cores: timings will be noisy and inflated; "
            "OMP_WAIT_POLICY=PASSIVE and/or --threads 1 make them far steadier on a shared machine")


def rss_mib() -> float | None:
    release_memory()
    kib = _proc_status_kib("VmRSS")
    return round(kib / 1024, 1) if kib is not None else None


def emit(doc: dict[str, Any], args: argparse.Namespace) -> None:
    doc["environment"]["load_average_end"] = load_average()
    doc["environment"]["time_end"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = json.dumps(doc, indent=2, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)


# ----------------------------------------------------------------------------------------------
# training (train_speed.py, and translate_speed.py --train-steps)


def train_pairs(args: argparse.Namespace, vocab: Vocab, max_len: int = 128) -> tuple[list[list[int]], list[list[int]]]:
    """Multi30k train en->de as subword ids, pairs longer than max_len tokens dropped (mt.data.batching.filter_pairs)."""
    from mt.data.batching import filter_pairs

    src = vocab.encode_batch(read_lines(data_file(args, "train.en.gz")))
    tgt = vocab.encode_batch(read_lines(data_file(args, "train.de.gz")))
    src, tgt, _ = filter_pairs(src, tgt, max_len)
    return src, tgt


class Stepper:
    """Optimizer steps exactly as mt.train.trainer.Trainer takes them: its optimizer and scheduler builders
    and its mt.train.optim.TrainStep (autocast, label-smoothed loss, backward, clipping, step), one token
    batch per step (accum 1), in one process; no run directory is made."""

    def __init__(self, name: str, model: Seq2Seq, device: torch.device, batch_tokens: int = 4096,
                 amp: str = "none", compile: bool = False, seed: int = 1, lr: float = 5e-4, warmup: int = 4000) -> None:
        from mt.config import Config, TrainConfig
        from mt.train.optim import TrainStep, build_optimizer, build_scheduler
        from mt.train.world import World

        cfg = Config(
            model=MODELS[name],
            train=TrainConfig(device=str(device), batch_tokens=batch_tokens, amp=amp, compile=compile, seed=seed,
                              lr=lr, warmup=warmup),
        )
        self.cfg = cfg
        self.update = TrainStep(cfg.train, World(device))
        torch.manual_seed(seed)  # as the Trainer seeds before its first step (dropout)
        self.model = model
        self.train_model = torch.compile(model) if compile else model
        self.optimizer = build_optimizer(model, cfg, device)
        self.scheduler, _ = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step(self, batch) -> tuple[float, int]:
        """One optimizer step on a mt.data.batching.Batch; returns (loss sum, target tokens)."""
        loss, ntok, stepped = self.update(self.train_model, self.optimizer, self.scaler, [batch])
        if stepped:  # as mt.train.trainer: an fp16 update skipped for overflow does not advance the schedule
            self.scheduler.step()
        return float(loss), ntok
