"""mt.rundir: the run directory's names, the one 'is this a run' check, and which weights
`--checkpoint best|last|PATH` picks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mt import MTError
from mt.rundir import (
    CHECKPOINTS,
    CONFIG,
    LATEST,
    META,
    WEIGHTS,
    check_run_dir,
    checkpoints_per_run,
    checkpoint_name,
    latest_checkpoint,
    vocab_files,
    weights_file,
)


def _checkpoint(run: Path, step: int) -> Path:
    folder = run / CHECKPOINTS / checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(b"w")
    (folder / META).write_text("{}")
    return folder


def test_check_run_dir_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="nowhere: no such run directory"):
        check_run_dir(tmp_path / "nowhere")
    with pytest.raises(MTError, match="not a run directory \\(no config.yaml"):
        check_run_dir(tmp_path)
    (tmp_path / CONFIG).write_text("{}")
    assert check_run_dir(str(tmp_path)) == tmp_path


def test_weights_file_best_last_and_paths(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="no weights yet"):
        weights_file(tmp_path, "best")
    first, second = _checkpoint(tmp_path, 4), _checkpoint(tmp_path, 12)
    assert checkpoint_name(12) == "step_00000012"
    # no best weights yet: both fall back to the newest checkpoint
    assert weights_file(tmp_path, "best") == weights_file(tmp_path, "last") == second / WEIGHTS
    (tmp_path / WEIGHTS).write_bytes(b"best")
    assert weights_file(tmp_path, "best") == tmp_path / WEIGHTS
    assert weights_file(tmp_path, "last") == second / WEIGHTS
    (tmp_path / CHECKPOINTS / LATEST).write_text(first.name + "\n")  # the pointer wins when complete
    assert latest_checkpoint(tmp_path) == first
    assert weights_file(tmp_path, str(second)) == second / WEIGHTS  # a checkpoint folder
    assert weights_file(tmp_path, "x/averaged.safetensors") == Path("x/averaged.safetensors")


def test_vocab_files(tmp_path: Path) -> None:
    assert vocab_files(tmp_path, joint=True) == (tmp_path / "spm.model", tmp_path / "spm.model")
    assert vocab_files(tmp_path, joint=False) == (tmp_path / "spm.src.model", tmp_path / "spm.tgt.model")


def test_the_run_directory_is_checked_without_torch(tmp_path: Path) -> None:
    code = f"import sys; from mt.rundir import is_run_dir; is_run_dir({str(tmp_path)!r}); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "False"


def test_checkpoints_per_run_are_given_once_or_once_per_run(tmp_path: Path) -> None:
    """The one check translate, score and load_models share (paths only, before torch)."""
    runs = [tmp_path / "a", tmp_path / "b"]
    weights = tmp_path / "avg.safetensors"
    weights.write_bytes(b"")
    assert checkpoints_per_run(runs, ["best"]) == ["best", "best"]
    assert checkpoints_per_run(runs, ["last", str(weights)]) == ["last", str(weights)]
    with pytest.raises(MTError, match=r"--checkpoint once .* 2 runs, 3 checkpoints"):
        checkpoints_per_run(runs, ["best", "last", "best"])
    with pytest.raises(MTError, match="nope.safetensors: no such checkpoint"):
        checkpoints_per_run(runs, [str(tmp_path / "nope.safetensors")])
