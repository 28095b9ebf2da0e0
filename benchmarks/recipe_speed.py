"""Training throughput of a recipe: target tokens/s of `mt train RECIPE` on the recipe's own
batches, for this checkout and, side by side in the same run, an older checkout (--old).

Both train from one prepared corpus (`mt prepare RECIPE`, made once in --work), with the recipe's
model, batches, optimizer and precision, for --steps updates each, without validating or saving
until the end; each run is a fresh process, the checkouts alternate (old, new, old, new, ...), and
a run's rate is the median of the trainer's own logged tokens_per_s over its windows after the
first (the first holds start-up and the allocator's first pages). The figure per checkout is the
best of its --repeats runs; `ratio` = new / old.

    python benchmarks/recipe_speed.py --old ../mt-before             # transformer-cpu, 2 threads
    python benchmarks/recipe_speed.py recipes/multi30k/gru-cpu.yaml --old ../mt-before --steps 60

--old DIR: a checkout of an older mt (`git worktree add ../mt-before <commit>`) run as
`python -m mt.cli.main` with DIR on PYTHONPATH (the symlink DIR/mt/cli -> ../cli is made when
missing). Without --old only this checkout is measured. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import torch  # noqa: E402
from checkouts import logged_rates, mt_command, steady_rate  # noqa: E402

RECIPE = ROOT / "recipes" / "multi30k" / "transformer-cpu.yaml"


def recipe_data_paths(recipe: Path) -> list[str]:
    """--set values that pin the recipe's relative data folders (validation text) to this
    checkout's, so that a run in another checkout's folder reads the same files."""
    import yaml

    data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data") or {}
    return [f"data.{key}={(ROOT / data[key]).resolve()}" for key in ("data_dir", "mirror")
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute()]


def train_once(name: str, checkout: Path | None, recipe: Path, prepared: Path, run_dir: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd, env, cwd = mt_command(checkout)
    data = recipe_data_paths(recipe)
    sets = [f"data.prepared={prepared}", *data, f"train.max_steps={args.steps}", f"train.log_every={args.log_every}",
            "train.valid_every=1000000", "train.save_every=1000000", "train.max_minutes=100000",
            "train.valid_max_sentences=8", "train.average_last=0", f"train.seed={args.seed}"]
    cmd = cmd + ["train", str(recipe), "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, **env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"{name}: mt train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    windows = logged_rates(run_dir)
    rate = steady_rate(windows)
    common.log(f"{name}: {rate} target tokens/s (windows {[round(w) for w in windows]}), {seconds:.0f} s, "
               f"load {common.load_average()}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tokens_per_s": rate, "windows": [round(w, 1) for w in windows], "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", type=Path, default=RECIPE)
    p.add_argument("--old", type=Path, help="an older checkout to measure beside this one")
    p.add_argument("--steps", type=int, default=80, help="updates per run (default 80)")
    p.add_argument("--log-every", type=int, default=10, help="steps per logged window (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="runs per checkout, alternating (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", type=Path, default=ROOT.parent / "bench-data" / "recipe-speed",
                   help="where the prepared corpus and the runs go (outside the repository)")
    p.add_argument("--output", type=Path, help="also write the JSON here")
    args = p.parse_args()
    recipe = args.recipe.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    prepared = args.work / f"prepared-{recipe.stem}"
    if not (prepared / "manifest.json").is_file():
        cmd, env, cwd = mt_command()
        common.log(f"preparing {recipe.name} into {prepared}")
        subprocess.run(cmd + ["prepare", str(recipe), "--out", str(prepared)], cwd=cwd, check=True,
                       env={**os.environ, **env})
    checkouts = {"new": None} if args.old is None else {"old": args.old.resolve(), "new": None}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    for r in range(args.repeats):
        for name, checkout in checkouts.items():
            runs[name].append(train_once(f"{name} #{r + 1}", checkout, recipe, prepared, args.work / f"run-{name}", args))
    best = {name: max(x["tokens_per_s"] or 0.0 for x in got) for name, got in runs.items()}
    doc: dict[str, Any] = {
        "benchmark": "recipe_speed",
        "recipe": str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe),
        "steps": args.steps, "threads": args.threads, "repeats": args.repeats,
        "old": str(args.old) if args.old else None,
        "old_commit": _commit(args.old) if args.old else None,
        "best_tokens_per_s": best, "runs": runs,
        "environment": common.environment(torch.device("cpu")),
    }
    if "old" in best and best["old"]:
        doc["ratio"] = round(best["new"] / best["old"], 3)
    common.emit(doc, args)


def _commit(path: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
