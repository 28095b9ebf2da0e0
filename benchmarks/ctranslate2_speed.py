"""CTranslate2 against mt on a trained Transformer run: speed, BLEU and identical lines, float32 and
int8, greedy and beam 5, measured side by side in one process.

    python benchmarks/ctranslate2_speed.py RUN [--test test_2016_flickr] [--data DIR] [--threads 2]
        [--lines N] [--repeats 1] [--output FILE]

The run is exported with `mt.interop.ctranslate2.export_ctranslate2` (float32 weights; int8 is CTranslate2's
compute_type="int8" at load, mt's is `mt translate --int8`). Both engines translate the same
lines with the same settings: beam 5 with the run's alpha in CTranslate2's length-penalty form
(mt: --len-penalty d2l, which is the same formula), greedy; token batches of the run's
decode.batch_tokens source tokens x beam (mt's Translator) and of the same number of tokens
(CTranslate2: batch_type="tokens"); the same number of threads (torch.set_num_threads,
intra_threads). mt's maximum output length is a * source length + b; CTranslate2 gets
max_decoding_length = a * (longest source) + b. Times exclude loading and SentencePiece. The
settings alternate engine by engine (mt, CTranslate2, mt, ...) so that a change in the load of a
shared machine touches both. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import ctranslate2  # noqa: E402

from mt.data.text import read_lines  # noqa: E402
from mt.interop.ctranslate2 import export_ctranslate2  # noqa: E402
from mt.metrics import score  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.decode.translator import Translator  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a Transformer run directory (mt train)")
    p.add_argument("--test", default="test_2016_flickr", help="Multi30k test set name (default test_2016_flickr)")
    p.add_argument("--data", default=common.DEFAULT_DATA,
                   help="folder with TEST.{src,tgt}.gz; relative paths resolve against the repository root "
                        f"(default {common.DEFAULT_DATA})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lines", type=int, default=0, help="first N lines only (0: all)")
    p.add_argument("--repeats", type=int, default=1, help="time each setting this many times, keep the fastest")
    p.add_argument("--settings", default="float32-greedy,float32-beam5,int8-greedy,int8-beam5")
    p.add_argument("--output", default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    run = load_for_decoding([args.run], device="cpu", threads=args.threads).run
    cfg = run.config
    data = common.data_dir(args)
    src_lines = read_lines(data / f"{args.test}.{cfg.data.src_lang}.gz")
    ref_lines = read_lines(data / f"{args.test}.{cfg.data.tgt_lang}.gz")
    if args.lines:
        src_lines, ref_lines = src_lines[: args.lines], ref_lines[: args.lines]
    env = common.environment(torch.device("cpu"))
    common.warn_if_loaded(torch.device("cpu"))
    sp = run.src_vocab  # joint or source SentencePiece model: the pieces CTranslate2 is given
    pieces = [sp.pieces(ids) for ids in sp.encode_batch(src_lines)]
    longest = max(len(p) for p in pieces) + 1
    d = cfg.decode
    max_decoding_length = min(int(longest * d.max_len_a + d.max_len_b), cfg.model.max_positions - 1)

    with tempfile.TemporaryDirectory() as tmp:
        out = export_ctranslate2(args.run, Path(tmp) / "ct2")
        engines = {}
        mt_int8 = None
        results = []
        for setting in args.settings.split(","):
            precision, search = setting.split("-")
            beam = 5 if search == "beam5" else 1
            decode = replace(d, search="beam" if beam > 1 else "greedy", beam=beam, n_best=1, len_penalty="d2l",
                             copy_unseen=False)  # CTranslate2 copies nothing
            if precision == "int8" and mt_int8 is None:
                mt_int8 = load_for_decoding([args.run], device="cpu", int8=True).run
            model_run = mt_int8 if precision == "int8" else run
            translator = Translator.for_model(model_run.model, model_run.src_vocab, model_run.tgt_vocab, decode, "cpu")
            if precision not in engines:
                engines[precision] = ctranslate2.Translator(str(out), device="cpu", compute_type=precision,
                                                            inter_threads=1, intra_threads=args.threads)
            ct2 = engines[precision]
            ct2_options = dict(beam_size=beam, length_penalty=d.alpha, max_decoding_length=max_decoding_length,
                               max_batch_size=max(d.batch_tokens // beam, 1), batch_type="tokens")
            translator.translate(src_lines[:20])  # warm-up
            ct2.translate_batch(pieces[:20], **ct2_options)
            mt_best = ct2_best = float("inf")
            for _ in range(args.repeats):
                common.log(f"{setting}: mt")
                t0 = time.perf_counter()
                mine = [t.text for t in translator.translate(src_lines)]
                mt_best = min(mt_best, time.perf_counter() - t0)
                common.log(f"{setting}: CTranslate2")
                t0 = time.perf_counter()
                res = ct2.translate_batch(pieces, **ct2_options)
                ct2_best = min(ct2_best, time.perf_counter() - t0)
            theirs = [run.tgt_vocab.sp.DecodePieces(r.hypotheses[0]) for r in res]
            same = sum(a == b for a, b in zip(mine, theirs))
            row = {
                "setting": setting,
                "mt_seconds": round(mt_best, 2),
                "ctranslate2_seconds": round(ct2_best, 2),
                "mt_sentences_per_second": round(len(src_lines) / mt_best, 1),
                "ctranslate2_sentences_per_second": round(len(src_lines) / ct2_best, 1),
                "speed_ratio_ctranslate2_over_mt": round(mt_best / ct2_best, 2),
                "identical_lines": same,
                "identical_share": round(same / len(src_lines), 4),
                "bleu_mt": round(score(mine, ref_lines, metrics=("bleu",))["bleu"].score, 2),
                "bleu_ctranslate2": round(score(theirs, ref_lines, metrics=("bleu",))["bleu"].score, 2),
            }
            common.log(f"  {row}")
            results.append(row)
    doc = {
        "benchmark": "ctranslate2_speed",
        "run": str(args.run),
        "test": args.test,
        "lines": len(src_lines),
        "threads": args.threads,
        "ctranslate2_version": ctranslate2.__version__,
        "decoding": {"length_penalty": f"d2l, alpha {d.alpha}", "max_len": f"{d.max_len_a} * src + {d.max_len_b}",
                     "ctranslate2_max_decoding_length": max_decoding_length, "batch_tokens": d.batch_tokens},
        "results": results,
        "environment": env,
    }
    common.emit(doc, args)


if __name__ == "__main__":
    main()
