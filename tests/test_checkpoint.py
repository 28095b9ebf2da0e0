"""Run-directory primitives (mt/checkpoint.py): atomic writes, checkpoint folders, safe loading, averaging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mt import MTError
from mt.checkpoint import (
    average_weights,
    load_trainer_state,
    load_weights,
    remove_stale_temp,
    save_weights,
    write_checkpoint,
)
from mt.files import atomic_write, atomic_write_json, atomic_write_text
from mt.rundir import checkpoint_dirs, latest_checkpoint


def tiny_model(seed: int = 0, width: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, 2))


def state_dict_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trainer_state(step: int) -> dict:
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return {
        "progress": {"step": step, "epoch": 0, "position": step, "tokens": 10, "best_score": None,
                     "best_step": 0, "bad_validations": 0},
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# atomic files


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "meta.json"
    atomic_write_json(path, {"step": 1})
    atomic_write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    assert leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_old_content_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    atomic_write_text(path, "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# checkpoint folders


def test_write_checkpoint_layout_latest_and_keep_last(tmp_path: Path) -> None:
    model = tiny_model()
    for step in (2, 4, 6, 8):
        final = write_checkpoint(tmp_path, step, model, trainer_state(step), {"step": step}, keep_last=2)
        assert final == tmp_path / "checkpoints" / f"step_{step:08d}"
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_00000006", "step_00000008"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000008"
    ckpt = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "model.safetensors", "trainer_state.pt"]
    assert json.loads((ckpt / "meta.json").read_text()) == {"step": 8}
    assert state_dict_equal(load_file(str(ckpt / "model.safetensors")), model.state_dict())
    assert leftovers(tmp_path) == []


def test_latest_checkpoint_falls_back_when_pointer_is_stale(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    model = tiny_model()
    write_checkpoint(tmp_path, 2, model, trainer_state(2), {"step": 2}, keep_last=5)
    write_checkpoint(tmp_path, 4, model, trainer_state(4), {"step": 4}, keep_last=5)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")  # points nowhere
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def test_write_checkpoint_leaves_nothing_when_torch_save_raises(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    write_checkpoint(tmp_path, 2, model, trainer_state(2), {"step": 2}, keep_last=3)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")  # something is on disk when it dies
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="no space left"):
        write_checkpoint(tmp_path, 4, model, trainer_state(4), {"step": 4}, keep_last=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # no temp folder, no step_4
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert leftovers(tmp_path) == []


def test_write_checkpoint_and_remove_stale_temp_clean_up_after_a_killed_process(tmp_path: Path) -> None:
    model = tiny_model()
    write_checkpoint(tmp_path, 2, model, trainer_state(2), {"step": 2}, keep_last=3)
    # what SIGKILL in the middle of writes leaves behind
    half = tmp_path / "checkpoints" / ".step_00000004.abc123"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / ".meta.json.xyz.tmp").write_text("{")
    (tmp_path / ".spm-q1w2").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000002"  # a temp folder is never a checkpoint
    removed = remove_stale_temp(tmp_path)
    assert sorted(p.name for p in removed) == [".meta.json.xyz.tmp", ".spm-q1w2", ".step_00000004.abc123"]
    assert leftovers(tmp_path) == []
    assert (tmp_path / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    half.mkdir()
    write_checkpoint(tmp_path, 4, model, trainer_state(4), {"step": 4}, keep_last=3)
    assert leftovers(tmp_path) == []


def test_rewriting_a_checkpoint_step_replaces_it(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 2, tiny_model(0), trainer_state(2), {"step": 2}, keep_last=3)
    other = tiny_model(1)
    write_checkpoint(tmp_path, 2, other, trainer_state(2), {"step": 2}, keep_last=3)
    got = load_file(str(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert state_dict_equal(got, other.state_dict())


# ----------------------------------------------------------------------------------------------
# trainer state: weights_only loading


def test_trainer_state_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = trainer_state(7)
    write_checkpoint(tmp_path, 7, tiny_model(), state, {"step": 7}, keep_last=1)
    got = load_trainer_state(tmp_path / "checkpoints" / "step_00000007" / "trainer_state.pt")
    assert got["progress"] == state["progress"]
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    exp_state = state["optimizer"]["state"][0]
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], exp_state["exp_avg"])


class _Evil:
    """Unpickling this would create a file (and could do anything else)."""

    marker: str = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_trainer_state_does_not_execute(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "trainer_state.pt"
    torch.save({"progress": evil}, path)
    assert not marker.exists()
    with pytest.raises(MTError, match="not a readable trainer state"):
        load_trainer_state(path)
    assert not marker.exists()


def test_missing_or_corrupt_trainer_state_is_an_mt_error(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="no such trainer state"):
        load_trainer_state(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(MTError, match="not a readable trainer state"):
        load_trainer_state(bad)


# ----------------------------------------------------------------------------------------------
# weights


def test_save_and_load_weights(tmp_path: Path) -> None:
    src, dst = tiny_model(0), tiny_model(1)
    save_weights(src, tmp_path / "model.safetensors", {"step": "3"})
    load_weights(dst, tmp_path / "model.safetensors")
    assert state_dict_equal(src.state_dict(), dst.state_dict())
    with pytest.raises(MTError, match="does not fit"):
        load_weights(tiny_model(0, width=5), tmp_path / "model.safetensors")
    with pytest.raises(MTError, match="no such checkpoint"):
        load_weights(dst, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(MTError, match="not a readable safetensors"):
        load_weights(dst, tmp_path / "junk.safetensors")


def test_average_weights_is_elementwise_mean(tmp_path: Path) -> None:
    a, b = tiny_model(0).state_dict(), tiny_model(1).state_dict()
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    avg = average_weights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert avg.keys() == a.keys()
    for k in a:
        assert avg[k].dtype == a[k].dtype
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-7)
    save_file(tiny_model(0, width=5).state_dict(), str(tmp_path / "c.safetensors"))
    with pytest.raises(MTError, match="shape"):
        average_weights([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])
    with pytest.raises(MTError, match="no checkpoints"):
        average_weights([])
    # a checkpoint in another precision is refused, not silently averaged into it
    save_file({k: v.to(torch.bfloat16) for k, v in b.items()}, str(tmp_path / "bf16.safetensors"))
    with pytest.raises(MTError, match="bfloat16, not torch.float32"):
        average_weights([tmp_path / "a.safetensors", tmp_path / "bf16.safetensors"])


def test_average_weights_takes_integer_tensors_from_the_last_checkpoint(tmp_path: Path) -> None:
    for name, (w, n) in {"a": (1.0, 3), "b": (2.0, 4)}.items():
        save_file({"w": torch.full((2,), w), "count": torch.tensor([n], dtype=torch.long)},
                  str(tmp_path / f"{name}.safetensors"))
    avg = average_weights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert avg["w"].tolist() == [1.5, 1.5]
    assert avg["count"].dtype == torch.long and avg["count"].tolist() == [4]
