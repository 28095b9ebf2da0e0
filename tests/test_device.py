"""mt.device: device and precision names are checked without torch; resolve_device and
set_decoding_dtype check what only the machine can tell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mt import MTError
from mt.device import _on_glibc, check_device, check_precision, resolve_device


def test_device_names() -> None:
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        check_device(name)
    for name in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(MTError, match="unknown device"):
            check_device(name)
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(MTError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_precision_rules() -> None:
    check_precision("float32", "cpu", int8=True)
    check_precision("bfloat16", "cpu")
    check_precision("float16", "auto")  # may be a GPU: decided once resolved
    check_precision("float16", "cuda:0")
    with pytest.raises(MTError, match="unknown dtype 'float64'"):
        check_precision("float64", "cpu")
    with pytest.raises(MTError, match="float16 needs a CUDA device, not cpu"):
        check_precision("float16", "cpu")
    with pytest.raises(MTError, match="exclude each other"):
        check_precision("bfloat16", "cpu", int8=True)
    with pytest.raises(MTError, match="CPU only"):
        check_precision("float32", "cuda", int8=True)


def test_the_checks_need_no_torch() -> None:
    code = ("import sys; from mt.device import check_device, check_precision; check_device('cuda:0'); "
            "check_precision('bfloat16', 'auto'); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "False"


_FREED_PAGES = """
import sys, torch
from mt.device import keep_freed_host_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

applied = keep_freed_host_memory() if sys.argv[1] == "keep" else False
x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, every page touched
held = rss_mib()
del x
print(applied, round(held - rss_mib(), 1))
"""


@pytest.mark.skipif(not _on_glibc(), reason="glibc's allocator")
def test_freed_tensor_memory_stays_for_the_next_step() -> None:
    """glibc unmaps a freed 64 MiB block at once (the process shrinks by 64 MiB); once training's
    setting is applied the pages stay in the process for the next tensor."""
    runs = {}
    for mode in ("default", "keep"):
        r = subprocess.run([sys.executable, "-c", _FREED_PAGES, mode], capture_output=True, text=True,
                           timeout=120, check=True)
        applied, released = r.stdout.split()
        runs[mode] = (applied, float(released))
    assert runs["default"][0] == "False" and runs["default"][1] > 48  # given back: most of the 64 MiB
    assert runs["keep"][0] == "True" and runs["keep"][1] < 16  # kept


def test_training_allocator_env_turns_the_tcache_off_once() -> None:
    from mt.device import TCACHE_OFF, training_allocator_env

    if not _on_glibc():
        assert training_allocator_env({}) is None
        return
    assert training_allocator_env({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": TCACHE_OFF}
    # the user's own tunables are kept, and a tcache setting of theirs wins
    assert training_allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
        f"glibc.malloc.arena_max=2:{TCACHE_OFF}")
    assert training_allocator_env({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3"}) is None


_REEXEC = """
import os, sys
print("start", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], file=sys.stderr, flush=True)
sys.argv = ["mt", sys.argv[1], "--help"]
from mt.cli.main import main
main()
"""


@pytest.mark.skipif(not _on_glibc(), reason="glibc's tunables")
@pytest.mark.parametrize("command", ["train", "translate"])
def test_mt_train_runs_again_with_the_tcache_off(command: str) -> None:
    """`mt train` starts itself again, once, with the same command line and glibc's tcache off (glibc
    reads its tunables at start); other commands run as they are."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    r = subprocess.run([sys.executable, "-c", _REEXEC, command], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    starts = [line for line in r.stderr.splitlines() if line.startswith("start")]
    if command == "train":
        assert starts == [f"start None ['{command}']", f"start glibc.malloc.tcache_count=0 ['{command}']"]
    else:
        assert starts == [f"start None ['{command}']"]
    assert r.stdout.count("Usage:") == 1  # the command itself ran once
