"""Shared fixtures: the installed `mt` command in a subprocess, and ONE tiny trained run per session.

The run is trained once through the real CLI (`mt train recipes/demo.yaml --run-dir ... --set ...`) and
shared read-only; a test that changes a run works on a copy (`copy_run`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = ROOT / "recipes" / "demo.yaml"

#: the tiny run: a 1+1 layer Transformer, d_model 32, 30 steps (about 15 s on 2 CPU cores)
TINY_TRAIN_STEPS = 30
TINY_TRAIN_SETTINGS = [
    f"train.max_steps={TINY_TRAIN_STEPS}",
    "train.valid_every=15",
    "data.synthetic_train=500",
    "data.synthetic_valid=20",
    "data.synthetic_test=20",
    "model.d_model=32",
    "model.ff_dim=64",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.heads=2",
    "vocab.size=200",
    # a vocabulary without byte pieces (too small for 256 of them), as runs trained before
    # vocab.byte_fallback existed have: the CLI tests keep covering such runs
    "vocab.byte_fallback=false",
    "train.batch_tokens=800",
    # 128 and not 64: the trainer does not yet filter the validation set by the model's position limit
    "model.max_positions=128",
]
#: the longest source (subword tokens) the tiny model translates in one piece (one position for eos)
TINY_MAX_INPUT_TOKENS = 127


def mt_command() -> list[str]:
    """The installed console script of this venv (falls back to `python -m mt.cli.main`)."""
    script = Path(sys.executable).with_name("mt")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("mt")
    return [found] if found else [sys.executable, "-m", "mt.cli.main"]


def mt_env(**extra: str) -> dict[str, str]:
    """A quiet, deterministic environment: no MT_DEBUG, one torch thread, wide plain help."""
    env = {k: v for k, v in os.environ.items() if k not in ("MT_DEBUG", "FORCE_COLOR")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", NO_COLOR="1", TERM="dumb",
               PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes

    def explain(self) -> str:
        return f"mt {' '.join(self.args)}\nexit {self.returncode}\n--- stderr:\n{self.stderr}\n--- stdout:\n{self.stdout[:2000]}"

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_mt(*args: str | Path, stdin: bytes | str | None = None, cwd: Path | None = None,
           env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """Run `mt ARGS` to completion; stdin as bytes (str is encoded as UTF-8)."""
    argv = [str(a) for a in args]
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    p = subprocess.run(
        mt_command() + argv, input=data if data is not None else b"", capture_output=True,
        cwd=cwd, env=env or mt_env(), timeout=timeout,
    )
    return Result(argv, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"),
                  p.stdout)


def assert_clean_failure(r: Result, *fragments: str, code: int = 1, only_line: bool = True) -> None:
    """A non-zero exit, one `mt: error:` line naming `fragments` and no traceback. With only_line the
    error is the whole of stderr; otherwise (training logs progress first) it is the last line."""
    assert r.returncode == code, r.explain()
    assert "Traceback" not in r.stderr, r.explain()
    lines = r.stderr_lines
    assert lines, r.explain()
    errors = [line for line in lines if line.startswith("mt: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.explain()
    if only_line:
        assert len(lines) == 1, r.explain()
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in the error line\n{r.explain()}"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run directory (read-only for tests: copy it with copy_run before changing it)."""
    if not DEMO_RECIPE.is_file():
        pytest.fail(f"{DEMO_RECIPE} is missing: the CLI tests train the tiny run from it")
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    settings = [arg for s in TINY_TRAIN_SETTINGS for arg in ("--set", s)]
    r = run_mt("train", DEMO_RECIPE, "--run-dir", run_dir, *settings, cwd=run_dir.parent, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"training the tiny run failed\n{r.explain()}")
    return run_dir


#: a small Transformer that learns the synthetic pair in 300 steps (tests/test_learning.py states
#: its BLEU; tests/test_export.py compares CTranslate2's output of it with mt's)
SMALL_TRANSFORMER = {
    "data": {"corpus": "synthetic", "synthetic_train": 4000, "synthetic_valid": 100, "synthetic_test": 0,
             "synthetic_max_clauses": 1, "max_len": 40},
    "vocab": {"size": 400, "model_type": "word", "byte_fallback": False},  # no room for 256 byte pieces
    "model": {"arch": "transformer", "d_model": 64, "heads": 4, "enc_layers": 2, "dec_layers": 2, "ff_dim": 128,
              "dropout": 0.0, "share_embeddings": True},
    "train": {"batch_tokens": 1500, "max_steps": 300, "lr": 0.003, "warmup": 60, "valid_every": 300,
              "label_smoothing": 0.0},
    "decode": {"search": "greedy"},
}


@dataclass
class TrainedRun:
    path: Path
    summary: dict


@pytest.fixture(scope="session")
def small_transformer_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """SMALL_TRANSFORMER trained in-process with one thread (deterministic); read-only for tests."""
    import torch

    from mt.config import config_from_dict
    from mt.train.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("small") / "run"
        summary = Trainer(config_from_dict(SMALL_TRANSFORMER), run_dir).train()
    finally:
        torch.set_num_threads(threads)
    return TrainedRun(run_dir, summary)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread is faster, immune to a busy CPU, and gives the
    same arithmetic every time (the learning thresholds and bitwise resume checks rely on it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
