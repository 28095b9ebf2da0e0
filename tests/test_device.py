"""mt.device: device and precision names are checked without torch; resolve_device and
set_decoding_dtype check what only the machine can tell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mt import MTError
from mt.device import check_device, check_precision, resolve_device


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
