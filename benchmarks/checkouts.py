"""Running `mt` from a checkout, this one or an older one (the before/after benchmarks:
data_scale.py, recipe_speed.py), and reading the training rate a run logged. No torch here:
data_scale.py measures processes and does not load it."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mt_command(checkout: Path | None = None) -> tuple[list[str], dict[str, str], Path]:
    """How to run `mt` from `checkout` (None: this one): the command, the environment to add and
    the folder to run it in. `python -m` puts that folder first on sys.path, so it must be the
    checkout's own root; an older checkout gets the symlink mt/cli -> ../cli that the installed
    package maps (`mt.cli` is the repository's cli/)."""
    root = ROOT if checkout is None else Path(checkout)
    link = root / "mt" / "cli"
    if checkout is not None and not link.exists():
        link.symlink_to("../cli")
    return [sys.executable, "-m", "mt.cli.main"], {"PYTHONPATH": str(root)}, root


def logged_rates(run_dir: Path) -> list[float]:
    """The target tokens/s of every window the trainer logged in RUN_DIR/metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["tokens_per_s"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
            if "tokens_per_s" in r]


def steady_rate(rates: list[float]) -> float | None:
    """The median of the windows after the first (the first holds start-up), or None."""
    return round(statistics.median(rates[1:]), 1) if len(rates) > 1 else None
