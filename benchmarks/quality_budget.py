"""What a recipe reaches in a budget of wall-clock minutes: train, then score every model it gives.

    python benchmarks/quality_budget.py RECIPE --minutes M [--seeds N] [--average K] [--work DIR]
                                        [--set KEY=VALUE ...] [--beam 5] [--threads N] [--output FILE]

Trains RECIPE with `mt train` for M minutes (train.max_minutes; N seeds one after another, each in
its own run), averaging the last K checkpoints at the end (train.average_last), then translates the
recipe's validation and test sets with beam search from each run's

- last checkpoint, best-on-validation checkpoint (model.safetensors) and averaged checkpoint,
- and, with N > 1, the ensemble of the seeds (each run's best validated weights),

and prints JSON: per run the steps, target tokens/s, the precision train.amp chose, the validation
curve; per model BLEU (sacreBLEU: 13a, cased, detokenized) and chrF with their signatures, and
lowercased BLEU on 13a tokens, the nearest sacreBLEU gets to the tokenized lowercased BLEU papers
on Multi30k report (those tokenize with Moses: not the same number, a guide).

The recipe's data section names the sets: Multi30k's val and test_2016_flickr, or the synthetic
pair's (the smoke test). Not part of `make bench`: it trains for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.config import DecodeConfig, load_config  # noqa: E402
from mt.data.text import load_corpus  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.metrics import score  # noqa: E402
from mt.rundir import AVERAGED, CONFIG, METRICS, WEIGHTS, weights_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="recipe YAML (e.g. recipes/multi30k/transformer-cpu.yaml)")
    p.add_argument("--minutes", type=float, required=True, help="training wall-clock minutes per seed")
    p.add_argument("--seeds", type=int, default=1, help="runs with seeds 1..N (N > 1: their ensemble is scored)")
    p.add_argument("--average", type=int, default=5, help="checkpoints averaged at the end (train.average_last)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override passed to mt train (repeatable)")
    p.add_argument("--work", default=None, help="folder for the runs (default: a new folder under /tmp)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training and decoding (0: torch's)")
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    p.add_argument("--no-train", action="store_true",
                   help="score the runs already trained in --work (seed1..seedN) instead of training them "
                        "(their training seconds are then not known)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.seeds < 1 or args.average < 1 or args.beam < 1:
        p.error("--minutes must be > 0; --seeds, --average and --beam >= 1")
    return args


def mt_train(recipe: str, run: Path, seed: int, minutes: float, overrides: list[str], average: int | None = None,
             threads: int = 0) -> float:
    """`mt train` in a subprocess, as a user runs it, for `minutes`; `average`: train.average_last
    (None: the recipe's). Returns its wall-clock seconds."""
    mt = Path(sys.executable).with_name("mt")
    sets = [f"train.max_minutes={minutes}", f"train.seed={seed}", *overrides]
    if average is not None:
        sets.append(f"train.average_last={average}")
        # keep_last: the checkpoints the average needs (a recipe's own larger value stands)
        if load_config(recipe, overrides).train.keep_last < average:
            sets.append(f"train.keep_last={average}")
    cmd = [str(mt) if mt.is_file() else "mt", "train", recipe, "--run-dir", str(run)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    common.log(" ".join(cmd))
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"mt train failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return time.monotonic() - start


def check_trained(run: Path) -> None:
    """--no-train: `run` must hold a trained run."""
    if not (run / "meta.json").is_file():
        raise SystemExit(f"error: --no-train: {run} is not a trained run")


def run_record(run: Path, seconds: float | None) -> dict[str, Any]:
    """Steps, throughput, the precision chosen and the validation curve of a finished run."""
    meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    lines = [json.loads(line) for line in (run / METRICS).read_text(encoding="utf-8").splitlines() if line.strip()]
    windows = [r for r in lines if "tokens_per_s" in r]
    return {
        "run": str(run),
        "train_seconds": round(seconds, 1) if seconds is not None else None,
        "steps": meta["step"],
        "target_tokens_per_s": round(sum(r["tokens_per_s"] for r in windows) / max(len(windows), 1), 1),
        "amp": meta.get("amp"),
        "best_step": meta.get("best_step"),
        "best_weights": meta.get("best_weights", WEIGHTS),
        "valid_curve": [{"step": r["step"], "bleu": round(r["valid"]["bleu"], 2), "loss": round(r["valid"]["loss"], 4)}
                        for r in lines if "valid" in r],
        "averaged": {k: v for k, v in (meta.get("averaged") or {}).items() if k != "valid"},
    }


def evaluate(runs: list[Path], checkpoints: list[str], sets: dict[str, tuple[list[str], list[str]]],
             decode: DecodeConfig) -> dict[str, Any]:
    """Translations of each set by the model (one run or an ensemble) as `decode` says, scored."""
    loaded = load_for_decoding(runs, checkpoints=checkpoints, device="cpu", warn=lambda m: None)
    translator = loaded.translator(decode)
    out: dict[str, Any] = {}
    for name, (src, refs) in sets.items():
        start = time.monotonic()
        hyps = [t.text for t in translator.translate(src)]
        seconds = time.monotonic() - start
        cased = score(hyps, [refs], metrics=("bleu", "chrf"))
        lower = score(hyps, [refs], metrics=("bleu",), lowercase=True)
        out[name] = {
            "sentences": len(src),
            "bleu": round(cased["bleu"].score, 2),
            "chrf": round(cased["chrf"].score, 2),
            "bleu_lowercased": round(lower["bleu"].score, 2),
            "bleu_signature": cased["bleu"].signature,
            "chrf_signature": cased["chrf"].signature,
            "bleu_lowercased_signature": lower["bleu"].signature,
            "sentences_per_s": round(len(src) / max(seconds, 1e-9), 1),
        }
    return out


def work_folder(args: argparse.Namespace, name: str) -> Path:
    """Set --threads for this process and make the folder of the runs (--work, or a new one in /tmp)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(f"/tmp/mt-{name}-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    return work


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = work_folder(args, "quality-budget")
    runs, records = [], []
    for seed in range(1, args.seeds + 1):
        run = work / f"seed{seed}"
        if args.no_train:
            check_trained(run)
            seconds = None
        elif run.exists():
            raise SystemExit(f"error: {run} exists; give another --work")
        else:
            seconds = mt_train(args.recipe, run, seed, args.minutes, args.overrides, args.average, args.threads)
        runs.append(run)
        records.append(run_record(run, seconds))

    # the sets as the run's own config names them (its data section after --set)
    run_cfg = load_config(runs[0] / CONFIG)
    corpora = load_corpus(run_cfg.data, run_cfg.train.seed, splits=("valid", "test"))
    sets = {name: corpora[name] for name in ("valid", "test") if name in corpora}
    decode = replace(run_cfg.decode, search="beam", beam=args.beam)
    for run, record in zip(runs, records):
        models = {"last": str(weights_file(run, "last")), "best": str(run / WEIGHTS)}
        if (run / AVERAGED).is_file():
            models["averaged"] = str(run / AVERAGED)
        record["models"] = {}
        for name, path in models.items():
            common.log(f"{run.name}: translating with the {name} weights")
            record["models"][name] = evaluate([run], [path], sets, decode)
    doc: dict[str, Any] = {
        "benchmark": "quality_budget",
        "recipe": args.recipe,
        "overrides": args.overrides,
        "minutes": args.minutes,
        "average_last": args.average,
        "beam": args.beam,
        "environment": common.environment(torch.device("cpu")),
        "runs": records,
    }
    if len(runs) > 1:
        common.log(f"translating with the ensemble of {len(runs)} runs")
        doc["ensemble"] = evaluate(runs, ["best"], sets, decode)
    common.emit(doc, args)


if __name__ == "__main__":
    main()
