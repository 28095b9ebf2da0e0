"""CTranslate2 against mt on a trained Transformer run: speed, BLEU and identical lines, float32 and
int8, greedy and beam 5, each engine timed in a process of its own.

    python benchmarks/ctranslate2_speed.py RUN [--test test_2016_flickr] [--data DIR] [--threads 2]
        [--lines N] [--repeats 1] [--output FILE]

The run is exported with `mt.interop.ctranslate2.export_ctranslate2` (float32 weights; int8 is CTranslate2's
compute_type="int8" at load, mt's is `mt translate --int8`). Both engines translate the same
lines with the same settings: beam 5 with the run's alpha in CTranslate2's length-penalty form
(mt: --len-penalty d2l, which is the same formula), greedy; mt's loop guard off (--max-repeat 0:
CTranslate2 has none); token batches of the run's
decode.batch_tokens source tokens x beam (mt's Translator) and of the same number of tokens
(CTranslate2: batch_type="tokens"); the same number of threads (torch.set_num_threads,
intra_threads). mt's maximum output length is a * source length + b; CTranslate2 gets
max_decoding_length = a * (longest source) + b. Times exclude loading and SentencePiece (mt is
given the source ids, CTranslate2 the source pieces).

Each timing runs in a fresh worker process (this script with --worker), engine by engine (mt,
CTranslate2, mt, ...), so that a change in the load of a shared machine touches both. One process
for both would measure neither: CTranslate2 brings its own OpenMP runtime (a second libgomp with
its own threads), and once its thread pool exists torch's parallel regions in the same process
slow down (mt's greedy search took 1.5-1.8x as long after one CTranslate2 call on the 2-core
development machine). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fresh  # noqa: E402  (torch-free, as the CTranslate2 worker must stay)

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", help="a Transformer run directory (mt train)")
    p.add_argument("--test", default="test_2016_flickr", help="Multi30k test set name (default test_2016_flickr)")
    p.add_argument("--data", default=None,
                   help="folder with TEST.{src,tgt}.gz; relative paths resolve against the repository root "
                        "(default ../shared/data/multi30k)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lines", type=int, default=0, help="first N lines only (0: all)")
    p.add_argument("--repeats", type=int, default=1, help="time each setting this many times, keep the fastest")
    p.add_argument("--settings", default="float32-greedy,float32-beam5,int8-greedy,int8-beam5")
    p.add_argument("--output", default=None)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # a job file: time one engine
    return p.parse_args()


# ----------------------------------------------------------------------------------------------
# workers: one engine, one setting, one timing, in a process of its own


def mt_worker(job: dict) -> dict:
    import torch

    from mt.config import DecodeConfig
    from mt.decode.loading import load_for_decoding
    from mt.decode.translator import Translator

    torch.set_num_threads(job["threads"])
    run = load_for_decoding([job["run"]], device="cpu", threads=job["threads"], int8=job["precision"] == "int8").run
    decode = DecodeConfig(**job["decode"])
    translator = Translator.for_model(run.model, run.src_vocab, run.tgt_vocab, decode, "cpu")
    src = job["ids"]
    translator.search_ids(src[:20])  # warm-up
    t0 = time.perf_counter()
    hyps = translator.search_ids(src)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": [h[0].tokens if h else [] for h in hyps]}


def ctranslate2_worker(job: dict) -> dict:
    import ctranslate2

    engine = ctranslate2.Translator(job["ct2"], device="cpu", compute_type=job["precision"], inter_threads=1,
                                    intra_threads=job["threads"])
    pieces, options = job["pieces"], job["options"]
    engine.translate_batch(pieces[:20], **options)  # warm-up
    t0 = time.perf_counter()
    res = engine.translate_batch(pieces, **options)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pieces": [r.hypotheses[0] for r in res], "version": ctranslate2.__version__}


def worker(job: dict) -> dict:
    return mt_worker(job) if job["engine"] == "mt" else ctranslate2_worker(job)


# ----------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        return fresh.answer(args.worker, worker)
    if args.run is None:
        raise SystemExit("ctranslate2_speed.py: a run directory is needed")
    import common  # imported here: the CTranslate2 worker loads neither torch nor mt
    import torch

    from mt.config import to_dict
    from mt.data.text import read_lines
    from mt.decode.loading import load_for_decoding
    from mt.interop.ctranslate2 import export_ctranslate2
    from mt.metrics import score

    args.data = args.data or common.DEFAULT_DATA
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
    ids = sp.encode_batch(src_lines)
    pieces = [sp.pieces(i) for i in ids]
    longest = max(len(p) for p in pieces) + 1
    d = cfg.decode
    max_decoding_length = min(int(longest * d.max_len_a + d.max_len_b), cfg.model.max_positions - 1)
    ct2_version = None

    with tempfile.TemporaryDirectory() as tmp:
        out = export_ctranslate2(args.run, Path(tmp) / "ct2")
        results = []
        for setting in args.settings.split(","):
            precision, search = setting.split("-")
            beam = 5 if search == "beam5" else 1
            decode = replace(d, search="beam" if beam > 1 else "greedy", beam=beam, n_best=1, len_penalty="d2l",
                             copy_unseen=False, max_repeat=0)  # CTranslate2 copies nothing and has no loop guard
            jobs = {
                "mt": {"engine": "mt", "run": str(args.run), "precision": precision, "threads": args.threads,
                       "decode": to_dict(decode), "ids": ids},
                "ctranslate2": {"engine": "ctranslate2", "ct2": str(out), "precision": precision,
                                "threads": args.threads, "pieces": pieces,
                                "options": dict(beam_size=beam, length_penalty=d.alpha,
                                                max_decoding_length=max_decoding_length,
                                                max_batch_size=max(d.batch_tokens // beam, 1), batch_type="tokens")},
            }
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for engine, job in jobs.items():
                    common.log(f"{setting}: {engine}")
                    res = fresh.in_fresh_process(__file__, job, Path(tmp))
                    if engine not in best or res["seconds"] < best[engine]["seconds"]:
                        best[engine] = res
            ct2_version = best["ctranslate2"]["version"]
            mine = [run.tgt_vocab.decode(t) for t in best["mt"]["tokens"]]
            theirs = [run.tgt_vocab.sp.DecodePieces(p) for p in best["ctranslate2"]["pieces"]]
            mt_best, ct2_best = best["mt"]["seconds"], best["ctranslate2"]["seconds"]
            same = sum(a == b for a, b in zip(mine, theirs))
            row = {
                "setting": setting,
                "mt_seconds": round(mt_best, 2),
                "ctranslate2_seconds": round(ct2_best, 2),
                "mt_sentences_per_second": round(len(src_lines) / mt_best, 1),
                "ctranslate2_sentences_per_second": round(len(src_lines) / ct2_best, 1),
                "speed_ratio_ctranslate2_over_mt": round(mt_best / ct2_best, 2),
                "mt_over_ctranslate2": round(ct2_best / mt_best, 2),
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
        "ctranslate2_version": ct2_version,
        "timing": "each engine in a fresh process per timing, loading and SentencePiece excluded; "
                  f"best of {args.repeats}",
        "decoding": {"length_penalty": f"d2l, alpha {d.alpha}", "max_len": f"{d.max_len_a} * src + {d.max_len_b}",
                     "ctranslate2_max_decoding_length": max_decoding_length, "batch_tokens": d.batch_tokens},
        "results": results,
        "environment": env,
    }
    common.emit(doc, args)


if __name__ == "__main__":
    main()
