"""Devices and decoding precisions: what `--device`, `--dtype` and `--int8` name.

The checks on names (`check_device`, `check_precision`) need no torch, so the command line runs
them before importing it (seconds); `resolve_device` and `set_decoding_dtype` import torch and check
what only the machine can tell (is there a CUDA device, does the CPU multiply bf16 natively).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Mapping

from mt import MTError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

    from mt.models.base import Seq2Seq

#: weight and activation types for decoding (`mt translate --dtype`), named as in torch; the
#: search's scores stay float32
DTYPES = ("float32", "bfloat16", "float16")

_DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


def check_device(name: str) -> None:
    """An MTError unless `name` is auto, cpu, cuda, cuda:N or mps (whether it exists here is
    resolve_device's question)."""
    if not _DEVICE.fullmatch(name):
        raise MTError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


def check_precision(dtype: str, device: str, int8: bool = False) -> None:
    """An MTError unless weights of `dtype` (DTYPES), int8 or not, can decode on `device` (a device
    name or type; `auto` passes here, set_decoding_dtype checks again once it is resolved)."""
    if dtype not in DTYPES:
        raise MTError(f"--dtype: unknown dtype {dtype!r} (use {', '.join(DTYPES)})")
    kind = device.split(":")[0]
    if int8 and dtype != "float32":
        raise MTError("--int8 and --dtype exclude each other (int8 layers compute in float32 around int8 weights)")
    if int8 and kind not in ("auto", "cpu"):
        raise MTError(f"--int8 runs on the CPU only (torch has no int8 kernels for {device}); use --device cpu")
    if dtype == "float16" and kind not in ("auto", "cuda"):
        raise MTError(f"--dtype float16 needs a CUDA device, not {kind}; use bfloat16 on the CPU")


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device that exists, or an MTError."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MTError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MTError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise MTError("device 'mps' requested but it is not available on this machine")
    return device


def cpu_flags() -> set[str] | None:
    """The x86 feature flags of /proc/cpuinfo (avx2, avx512_bf16, ...); None where there are none
    to read (not Linux, not x86)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX); None: cannot tell.
    Without it torch emulates bf16 and a bf16 model decodes many times slower."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})


def set_decoding_dtype(model: Seq2Seq, name: str, device: torch.device,
                       warn: Callable[[str], None] | None = None) -> Seq2Seq:
    """Cast `model` to float32, bfloat16 or float16 for decoding (in place). float16 needs CUDA; bf16
    on a CPU without native bf16 works but is slow, and says so through `warn`."""
    import torch

    check_precision(name, device.type)
    if name == "bfloat16" and device.type == "cpu" and cpu_has_native_bf16() is False and warn is not None:
        warn("this CPU has no native bf16 matrix products (AVX512-BF16 or AMX): --dtype bfloat16 decodes "
             "slower than float32 here")
    return model.to(getattr(torch, name))


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _on_glibc() -> bool:
    """Linux with glibc, the allocator whose settings training changes."""
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


#: glibc's cache of small freed blocks per thread, turned off for training (training_allocator_env)
TCACHE_OFF = "glibc.malloc.tcache_count=0"


def training_allocator_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment `mt train` runs in: `environ` with glibc's tcache turned off, or None when
    nothing is to change (not glibc, or GLIBC_TUNABLES already sets tcache_count).

    torch allocates with posix_memalign (64-byte alignment); glibc (2.36 where it was measured) cuts
    the aligned block out of a larger free chunk and frees the small pieces before and after it, and
    while its tcache holds such pieces they count as in use, so the free chunks around them cannot
    merge. Under the RNN recipes, whose steps allocate per time step and batch shape, the heap then
    grew to 8 GB with freed memory kept (keep_freed_host_memory); with the tcache off it stays near
    the live tensors (docs/performance.md, "Host memory"). glibc reads its tunables only when a
    process starts, so `mt train` starts again in this environment (reexec_for_training); a Trainer
    made in a process of one's own runs with the allocator that process has."""
    if not _on_glibc():
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.tcache_count" in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TCACHE_OFF}" if tunables else TCACHE_OFF
    return env


def reexec_for_training() -> None:
    """Start this process again, same command line, in training_allocator_env's environment (once:
    the new process finds its tunable set); returns when there is nothing to change."""
    import os
    import sys

    env = training_allocator_env(os.environ)
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def keep_freed_host_memory() -> bool:
    """Keep the host memory of freed tensors in the process for the next ones (glibc only; returns
    whether it applied).

    glibc serves a block above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a
    fresh mapping and unmaps it when freed, and gives free memory at the top of its heap back to the
    system: every training step then faults the pages of its large tensors in anew (the logits of a
    4096-token batch over a 5000-piece vocabulary alone are 80 MB). With blocks up to 1 GiB taken
    from the heap and the heap never trimmed, a step reuses the previous step's pages, as the
    caching allocators of CUDA, jemalloc or tcmalloc do; the process does not shrink until it ends.
    Training gains (docs/performance.md); decoding, which allocates little, does not, so only
    training calls this; `mt train` also runs with glibc's tcache off (training_allocator_env),
    without which the heap of the RNN recipes grew far beyond the live tensors."""
    import ctypes

    if not _on_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
