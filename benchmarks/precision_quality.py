"""int8 and bf16 against float32 on trained runs: BLEU, chrF, identical lines and speed of
`mt translate --int8` and `mt translate --dtype bfloat16`.

    python benchmarks/precision_quality.py RUN [RUN ...] [--types int8,bfloat16] [--test test_2016_flickr]
        [--data DIR] [--threads N] [--output FILE]

RUN is a run directory written by `mt train` on Multi30k (its recipe's src_lang/tgt_lang pick the
files DIR/TEST.{src,tgt}.gz). Each run is translated greedy and beam (the run's decode settings)
with float32 weights and with each of --types: int8 weights (mt.decode.quantize.quantize_int8), bfloat16
(mt.device.set_decoding_dtype), in-process through mt.decode.translator.Translator on the CPU, timed
without start-up. Prints one JSON document. Not part of `make bench`: it needs trained runs
(recipes/multi30k/transformer-cpu.yaml trains one in 45 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.metrics import score  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.data.text import read_lines  # noqa: E402
from mt.decode.translator import load_run  # noqa: E402

TYPES = ("int8", "bfloat16")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (mt train on Multi30k)")
    p.add_argument("--types", default="int8,bfloat16", help="comma list of int8, bfloat16 (default both)")
    p.add_argument("--test", default="test_2016_flickr", help="test set name (default test_2016_flickr)")
    p.add_argument("--data", default=common.DEFAULT_DATA, help=f"Multi30k folder (default {common.DEFAULT_DATA})")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    args = p.parse_args()
    args.types = [t for t in args.types.split(",") if t]
    bad = [t for t in args.types if t not in TYPES]
    if bad or not args.types:
        p.error(f"--types: choose from {', '.join(TYPES)}, got {args.types}")
    return args


def evaluate_run(run_dir: Path, args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    probe = load_run(run_dir, device)
    cfg = probe.config
    src_file = common.data_file(args, f"{args.test}.{cfg.data.src_lang}.gz")
    ref_file = common.data_file(args, f"{args.test}.{cfg.data.tgt_lang}.gz")
    src, ref = read_lines(src_file), read_lines(ref_file)
    res: dict = {"run": str(run_dir), "model": cfg.model.arch,
                 "parameters": sum(p.numel() for p in probe.model.parameters()),
                 "test": str(src_file), "sentences": len(src), "searches": {}}
    del probe
    outputs: dict = {}
    for weights in ("float32", *args.types):
        loaded = load_for_decoding([run_dir], device="cpu", int8=weights == "int8",
                                   dtype="float32" if weights == "int8" else weights, warn=common.log)
        for search in ("greedy", "beam"):
            decode = replace(loaded.run.config.decode, search=search, copy_unseen=False)
            tr = loaded.translator(decode, warn=lambda m: None)
            tr.translate(src[:16])  # warm-up
            with common.Measure(device) as m:
                hyps = [t.text for t in tr.translate(src)]
            outputs[(weights, search)] = hyps
            scores = score(hyps, [ref], ("bleu", "chrf"))
            label = search if search == "greedy" else f"beam{decode.beam}"
            res["searches"].setdefault(label, {})[weights] = {
                "bleu": round(scores["bleu"].score, 2),
                "chrf": round(scores["chrf"].score, 2),
                "sentences_per_s": round(len(src) / m.seconds, 2),
                **m.record(),
            }
            common.log(f"{run_dir} {weights} {label}: BLEU {scores['bleu'].score:.2f} "
                       f"chrF {scores['chrf'].score:.2f}, {len(src) / m.seconds:.1f} sent/s")
    for search, entry in res["searches"].items():
        key = "greedy" if search == "greedy" else "beam"
        entry["against_float32"] = {}
        for weights in args.types:
            same = sum(a == b for a, b in zip(outputs[("float32", key)], outputs[(weights, key)]))
            entry["against_float32"][weights] = {
                "identical_lines": f"{same}/{len(src)}",
                "bleu_change": round(entry[weights]["bleu"] - entry["float32"]["bleu"], 2),
                "speedup": round(entry["float32"]["seconds"] / entry[weights]["seconds"], 2),
            }
    res["signatures"] = {k: v.signature for k, v in score(["x"], [["x"]], ("bleu", "chrf")).items()}
    return res


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    common.warn_if_loaded(device)
    doc = {"benchmark": "precision_quality", "environment": common.environment(device),
           "runs": [evaluate_run(r, args) for r in args.runs]}
    common.emit(doc, args)


if __name__ == "__main__":
    main()
