"""The book's model families compared on one budget: each CPU recipe trained for M minutes, one table.

    python benchmarks/families.py --minutes M [--recipes R1,R2,...] [--work DIR] [--plots DIR]
                                  [--set KEY=VALUE ...] [--threads N] [--output FILE] [--no-train]

Trains each recipe (default: recipes/multi30k/{gru,lstm,bahdanau,luong,transformer}-cpu.yaml) with
`mt train` for M wall-clock minutes, one after another, and translates its test set with beam 5 and
greedy search from the run's best validated weights. The JSON table gives per family: parameters,
steps, target tokens/s, best validation BLEU, test BLEU and chrF (sacreBLEU 13a, cased) for each
search, decoding sentences/s, and test BLEU by source length (words) in buckets, where the
Bahdanau paper shows attention's gain growing with the length of the sentence.

With --plots DIR: `bleu_by_length.png` (one line per family) and, for each model with attention,
the heatmap of one test sentence (`mt translate --attention-plot`).

With --no-train the runs already in --work (WORK/gru, WORK/bahdanau, ...: trained by an earlier
call, or by `mt train RECIPE --run-dir WORK/NAME` with settings of one's own, such as a number of
updates in place of minutes) are scored instead of trained; their training seconds are then not known.

Not part of `make bench`: it trains for minutes per recipe.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from quality_budget import check_trained, mt_train, run_record, work_folder  # noqa: E402

from mt.config import load_config  # noqa: E402
from mt.data.text import load_corpus  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.metrics import score  # noqa: E402
from mt.rundir import CONFIG  # noqa: E402

FAMILIES = ["gru", "lstm", "bahdanau", "luong", "transformer"]
DEFAULT_RECIPES = ",".join(f"recipes/multi30k/{f}-cpu.yaml" for f in FAMILIES)
#: source-length buckets (words, inclusive upper bounds; the last takes the rest)
BUCKETS = (8, 12, 16, 20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, required=True,
                   help="training wall-clock minutes per recipe (with --no-train: the budget the runs "
                        "stand for, recorded in the JSON)")
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help="comma-separated recipe files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override passed to every `mt train` (repeatable)")
    p.add_argument("--work", default=None, help="folder for the runs (default: a new folder under /tmp)")
    p.add_argument("--plots", default=None, help="write bleu_by_length.png and attention heatmaps here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    p.add_argument("--no-train", action="store_true",
                   help="score the runs already trained in --work (WORK/gru, ...) instead of training them")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    return args


def bucket_of(words: int) -> str:
    low = 1
    for high in BUCKETS:
        if words <= high:
            return f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def test_scores(run: Path, src: list[str], refs: list[str], search: str) -> tuple[dict[str, Any], list[str]]:
    """BLEU, chrF and speed of the run's best weights on the test set with `search` (beam 5 or greedy)."""
    cfg = load_config(run / CONFIG)
    decode = replace(cfg.decode, search="beam", beam=5) if search == "beam5" else replace(cfg.decode, search="greedy")
    translator = load_for_decoding([run], device="cpu", warn=lambda m: None).translator(decode)
    start = time.monotonic()
    hyps = [t.text for t in translator.translate(src)]
    seconds = time.monotonic() - start
    s = score(hyps, [refs], metrics=("bleu", "chrf"))
    return {"bleu": round(s["bleu"].score, 2), "chrf": round(s["chrf"].score, 2),
            "bleu_signature": s["bleu"].signature, "sentences_per_s": round(len(src) / max(seconds, 1e-9), 1)}, hyps


def by_length(src: list[str], refs: list[str], hyps: list[str]) -> dict[str, dict[str, float]]:
    """Test BLEU per source-length bucket (words), with the sentences in each."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(src):
        groups.setdefault(bucket_of(len(s.split())), []).append(i)
    order = sorted(groups, key=lambda b: int(b.split("-")[0].rstrip("+")))
    return {b: {"sentences": len(groups[b]),
                "bleu": round(score([hyps[i] for i in groups[b]], [[refs[i] for i in groups[b]]],
                                    metrics=("bleu",))["bleu"].score, 2)} for b in order}


def attention_plot(run: Path, sentence: str, out: Path) -> str | None:
    """`mt translate --attention-plot` of one sentence into `out` (None for a model without attention)."""
    mt = Path(sys.executable).with_name("mt")
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(mt) if mt.is_file() else "mt", "translate", "-m", str(run), "--beam", "5",
                        "--attention-plot", str(out)], input=sentence + "\n", capture_output=True, text=True,
                       cwd=common.ROOT)
    if r.returncode != 0:
        return None
    pngs = sorted(out.glob("*.png"))
    return str(pngs[0]) if pngs else None


def plot_by_length(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, row in table.items():
        buckets = row["test_bleu_by_source_words"]
        ax.plot(list(buckets), [b["bleu"] for b in buckets.values()], marker="o", label=name)
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("test BLEU (beam 5)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = work_folder(args, "families")
    plots = Path(args.plots) if args.plots else None
    table: dict[str, Any] = {}
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        name = Path(recipe).stem.removesuffix("-cpu")
        run = work / name
        if args.no_train:
            check_trained(run)
            seconds = None
        elif run.exists():
            raise SystemExit(f"error: {run} exists; give another --work")
        else:
            seconds = mt_train(recipe, run, 1, args.minutes, args.overrides, threads=args.threads)
        record = run_record(run, seconds)
        cfg = load_config(run / CONFIG)
        src, refs = load_corpus(cfg.data, cfg.train.seed, splits=("test",))["test"]
        row: dict[str, Any] = {
            "recipe": recipe,
            "parameters": None,
            "steps": record["steps"],
            "target_tokens_per_s": record["target_tokens_per_s"],
            "best_valid_bleu": max((v["bleu"] for v in record["valid_curve"]), default=None),
            "best_weights": record["best_weights"],
        }
        for search in ("beam5", "greedy"):
            common.log(f"{name}: test set, {search}")
            row[search], hyps = test_scores(run, src, refs, search)
            if search == "beam5":
                row["test_bleu_by_source_words"] = by_length(src, refs, hyps)
        loaded = load_for_decoding([run], device="cpu", warn=lambda m: None)
        row["parameters"] = sum(p.numel() for p in loaded.run.model.parameters())
        if plots is not None and loaded.run.model.has_attention:
            row["attention_plot"] = attention_plot(run, src[0], plots / f"attention-{name}")
        table[name] = row
    doc: dict[str, Any] = {"benchmark": "families", "minutes": args.minutes, "trained_here": not args.no_train,
                           "overrides": args.overrides,
                           "environment": common.environment(torch.device("cpu")), "families": table}
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        plot_by_length(table, plots / "bleu_by_length.png")
        doc["bleu_by_length_plot"] = str(plots / "bleu_by_length.png")
    common.emit(doc, args)


if __name__ == "__main__":
    main()
