"""Checkpoints: safetensors weights, resumable trainer state, checkpoint folders, averaging.

A checkpoint folder (mt.rundir names its files) is filled under a temporary name and renamed
whole, so a killed process never leaves a half-written checkpoint behind; single files are written
atomically (mt.files). Nothing is loaded with pickle: weights are safetensors and the trainer state
is read with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from mt import MTError
from mt.files import atomic_write, atomic_write_text, fsync_dir, publish, temp_dir
from mt.rundir import CHECKPOINTS, LATEST, META, TRAINER_STATE, WEIGHTS, checkpoint_dirs, checkpoint_name


# ----------------------------------------------------------------------------------------------
# weights


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, lambda tmp: save_model(unwrap(model), str(tmp), metadata=metadata))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights; a missing, corrupt or foreign file gives an MTError."""
    path = Path(path)
    if not path.is_file():
        raise MTError(f"{path}: no such checkpoint")
    try:
        missing, unexpected = load_model(unwrap(model), str(path), strict=False, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise MTError(f"{path}: not a readable safetensors checkpoint ({_first_line(e)})") from None
    except RuntimeError as e:  # size mismatch
        raise MTError(
            f"{path}: checkpoint does not fit the model of this run's config.yaml "
            f"(vocabulary or architecture differ): {_first_line(e, 'size mismatch')}"
        ) from None
    if missing or unexpected:
        names = ", ".join(list(missing)[:3] + list(unexpected)[:3])
        raise MTError(f"{path}: checkpoint does not fit the model of this run's config.yaml (parameters differ: {names})")


def _first_line(e: BaseException, prefer: str | None = None) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if prefer:
        for ln in lines:
            if prefer in ln:
                return ln
    return lines[0] if lines else type(e).__name__


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several safetensors files with the same tensors."""
    if not paths:
        raise MTError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise MTError(f"{path}: not a readable safetensors checkpoint ({_first_line(e)})") from None
        if total and set(tensors) != set(total):
            raise MTError(f"{path}: holds other tensors than {paths[0]}; cannot average")
        for name, t in tensors.items():
            if name in total and total[name].shape != t.shape:
                raise MTError(f"{path}: tensor {name} has shape {tuple(t.shape)}, not {tuple(total[name].shape)}")
            if name in dtypes and dtypes[name] != t.dtype:
                raise MTError(f"{path}: tensor {name} is {t.dtype}, not {dtypes[name]} as in {paths[0]}; cannot average")
            total[name] = total[name] + t.double() if name in total else t.double()
            dtypes[name] = t.dtype
    # floating tensors: the mean; integer ones (counters, none in mt's models today) are not
    # averaged but taken from the last checkpoint, as Marian does
    last = {name: t for name, t in tensors.items() if not t.dtype.is_floating_point}
    return {name: last[name] if name in last else (t / len(paths)).to(dtypes[name]) for name, t in total.items()}


def write_average(paths: list[Path], out: Path) -> None:
    """The element-wise mean of the weights in `paths` (average_weights), written atomically to
    `out` as safetensors; its metadata names the averaged checkpoints."""
    tensors = average_weights(paths)
    meta = {"averaged": ",".join(p.parent.name if p.name == WEIGHTS else str(p) for p in paths)}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# ----------------------------------------------------------------------------------------------
# checkpoint folders


def write_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any], meta: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoints/step_N atomically (temp folder + rename), update `latest`, prune old ones."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = temp_dir(root, prefix=f".{final.name}.")
    try:
        save_model(unwrap(model), str(tmp / WEIGHTS))
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):  # temp folders of a killed process
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_stale_temp(run_dir: Path) -> list[Path]:
    """Delete what a killed process left half-written: temp checkpoint folders, temp files of
    atomic writes and SentencePiece temp folders. Call only while no other process writes the run."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    stale = list(root.glob(".step_*")) if root.is_dir() else []
    for folder in (run_dir, root, *checkpoint_dirs(run_dir)):
        if folder.is_dir():
            stale += [p for p in folder.glob(".*.tmp") if p.is_file()]
    stale += [p for p in run_dir.glob(".spm-*") if p.is_dir()]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def load_trainer_state(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # torch's warnings here advise weights_only=False: not for us
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MTError(f"{path}: no such trainer state") from None
    except pickle.UnpicklingError:
        raise MTError(
            f"{path}: not a readable trainer state (it holds objects that only load by running pickled "
            "code, which mt refuses)"
        ) from None
    except Exception as e:  # noqa: BLE001 - zip errors of a corrupt or foreign file
        raise MTError(f"{path}: not a readable trainer state ({_first_line(e)})") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file (meta.json, ...); anything else is a clear error."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MTError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MTError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise MTError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
