"""Data path at scale: `mt prepare` throughput and peak memory, and `mt train`'s time to first step,
peak memory and steady-state tokens/s, at several corpus sizes, for this checkout ("after") and,
optionally, an older checkout of mt ("before", e.g. a worktree of main before prepared corpora).

The corpus is Multi30k's training set (en->de) repeated to N pairs, as plain text files in --work
(never in the repository). Repetition makes exact duplicates, so the recipe sets data.dedup=false:
every one of the N pairs is prepared and trained on. The model is recipes/multi30k/transformer-cpu's
(d_model 128, 3+3 layers, joint 5000-piece vocabulary); no validation set, so that a run's time is
its data path and its updates.

Every command runs as a subprocess; measured from outside:
  - start-up: process start until the trainer announces its loop (data, vocabulary and model
    ready: "run directory: ..."), and until its first logged step (log_every 1: step 1 done);
  - peak RSS: the largest sum of VmRSS over the process and its children, sampled every 0.1 s
    (prepare's workers included), and the main process's own maximum (wait4's ru_maxrss);
  - prepare pairs/s: pairs read / encoding seconds, from the manifest (SentencePiece sampling and
    training reported separately); on a shared machine also 2 x pairs / CPU-seconds of the pass;
  - tokens/s: the median of the trainer's logged tokens_per_s over the windows after the first.

    python benchmarks/data_scale.py                                  # 0.1M pairs (make bench)
    python benchmarks/data_scale.py --sizes 100000,1000000,10000000 --old ../bench-data/old-mt
    python benchmarks/data_scale.py --large --old ../bench-data/old-mt   # the same three sizes

--old DIR: a checkout of an older mt whose `mt` command runs as `python -m mt.cli.main` with DIR on
PYTHONPATH (it needs DIR/mt/cli -> ../cli, made here when missing). --old-max-pairs skips the old
code above that size (it holds the whole corpus in Python lists: ~15 GB at 10M pairs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from checkouts import logged_rates, steady_rate
from checkouts import mt_command as checkout_command

ROOT = Path(__file__).resolve().parent.parent
M30K = ROOT.parent / "shared" / "data" / "multi30k"  # as the other benchmarks: ../shared/data/multi30k
WORK = ROOT.parent / "bench-data"  # beside the repository: corpora of 10M pairs and their runs

RECIPE = """name: data-scale
data:
  corpus: files
  train_src: {src}
  train_tgt: {tgt}
  max_len: 100
  dedup: false
vocab:
  size: 5000
  joint: true
  max_sentences: {vocab_sentences}
model:
  arch: transformer
  d_model: 128
  heads: 4
  enc_layers: 3
  dec_layers: 3
  ff_dim: 512
  dropout: 0.1
  share_embeddings: true
  tie_output: true
train:
  device: cpu
  batch_tokens: 4096
  max_steps: {steps}
  lr: 0.002
  warmup: 800
  log_every: {log_every}
  valid_every: 100000
  keep_last: 1
"""


def log(msg: str) -> None:
    print(f"[data_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# corpus and recipes


def make_corpus(work: Path, pairs: int, source: Path) -> tuple[Path, Path]:
    src, tgt = work / f"m30k-{pairs}.en", work / f"m30k-{pairs}.de"
    if src.is_file() and tgt.is_file():
        return src, tgt
    with gzip.open(source / "train.en.gz", "rb") as f:
        en = f.read().splitlines(keepends=True)
    with gzip.open(source / "train.de.gz", "rb") as f:
        de = f.read().splitlines(keepends=True)
    log(f"writing {pairs} pairs to {src} / {tgt}")
    for path, lines in ((src, en), (tgt, de)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            whole, rest = divmod(pairs, len(lines))
            block = b"".join(lines)
            for _ in range(whole):
                f.write(block)
            f.write(b"".join(lines[:rest]))
        os.replace(tmp, path)
    return src, tgt


def write_recipe(path: Path, src: Path, tgt: Path, steps: int, log_every: int, vocab_sentences: int) -> Path:
    path.write_text(RECIPE.format(src=src, tgt=tgt, steps=steps, log_every=log_every, vocab_sentences=vocab_sentences))
    return path


# ----------------------------------------------------------------------------------------------
# running and measuring a command


def _tree_rss_kib(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return total


TRAIN_MARKERS = {"startup_s": "run directory:", "first_step_s": "mt step "}


def run(cmd: list[str], env: dict[str, str] | None = None, markers: dict[str, str] | None = None,
        cwd: Path = ROOT) -> dict[str, Any]:
    """Run cmd; returns seconds, the seconds until a stderr line first contains each of `markers`
    (for mt train: the loop's start, after data, vocabulary and model are ready, and the first logged
    step), peak RSS (tree and main process, MiB), the exit code and the stderr tail."""
    markers = TRAIN_MARKERS if markers is None else markers
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **(env or {})}, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seen: dict[str, float] = {}
    tail: list[str] = []
    for line in proc.stderr:
        for name, marker in markers.items():
            if name not in seen and marker in line:
                seen[name] = round(time.monotonic() - start, 2)
        tail = (tail + [line.rstrip()])[-15:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    done.set()
    sampler.join()
    out = {"seconds": round(seconds, 2), **{name: seen.get(name) for name in markers},
           "peak_rss_tree_mib": round(peak[0] / 1024, 1), "peak_rss_main_mib": round(usage.ru_maxrss / 1024, 1),
           "exit": proc.returncode}
    if proc.returncode:
        out["stderr_tail"] = tail
        log(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    return out


def tokens_per_s(run_dir: Path) -> float | None:
    return steady_rate(logged_rates(run_dir))


def startup_probe(root: Path, recipe: Path) -> list[dict[str, Any]]:
    """In a fresh process: wall and CPU seconds (and RSS) of each start-up step of training on a
    prepared directory, up to the first batch; CPU seconds are what an idle machine would take."""
    code = f"""
import json, sys, time
t0, c0 = time.monotonic(), time.process_time()
def mark(name):
    rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    print(json.dumps({{"step": name, "wall_s": round(time.monotonic() - t0, 2),
                      "cpu_s": round(time.process_time() - c0, 2), "rss_mib": round(rss, 1)}}), flush=True)
import numpy, torch
mark("import numpy and torch")
from mt.config import load_config
from mt.data.batching import TokenBatcher
from mt.data.dataset import PreparedData
from mt.data.prepare import check_prepared
cfg = load_config({str(recipe)!r})
prep = PreparedData.open({str(root)!r})
mark("open the prepared directory, sha256 of every file")
check_prepared(prep, cfg)
mark("inputs unchanged")
b = TokenBatcher(prep.src, prep.tgt, cfg.train.batch_tokens, cfg.train.seed,
                 corpora=[(c["start"], c["end"], c["weight"]) for c in prep.corpora], max_len=cfg.data.max_len,
                 segmentations=prep.manifest.get("segmentations", 1))
mark("batcher")
batches = b.epoch_batches(0)
mark("epoch 0's batches")
b.collate(batches[0])
mark("first batch")
# the data path's share of a training step: collating 50 batches from the memory map, and the same
# batches from Python lists (what the trainer did before prepared corpora), in CPU milliseconds
from mt.data.batching import collate
some = batches[1:51]
lists = [([prep.src[i].tolist() for i in x], [prep.tgt[i].tolist() for i in x]) for x in some]
c = time.process_time()
for x in some:
    b.collate(x)
mapped = (time.process_time() - c) * 1000 / len(some)
c = time.process_time()
for s_, t_ in lists:
    collate(s_, t_)
listed = (time.process_time() - c) * 1000 / len(some)
print(json.dumps({{"step": "collate, CPU ms per batch", "memory_map": round(mapped, 3), "python_lists": round(listed, 3)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return [{"error": out.stderr[-2000:]}]
    return [json.loads(line) for line in out.stdout.splitlines()]


def mt_command() -> list[str]:
    return checkout_command()[0]


# ----------------------------------------------------------------------------------------------
# one size


def measure(pairs: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    src, tgt = make_corpus(work, pairs, args.data)
    here = work / f"run-{pairs}"
    reuse = args.reuse_prepared and (here / "prepared" / "manifest.json").is_file()
    if reuse:
        for name in ("after-prepared", "after-raw", "before"):
            shutil.rmtree(here / name, ignore_errors=True)
    else:
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
    recipe = write_recipe(here / "recipe.yaml", src, tgt, args.steps, args.log_every, args.vocab_sentences)
    doc: dict[str, Any] = {"pairs": pairs, "input_bytes": src.stat().st_size + tgt.stat().st_size}

    if args.before_only:
        prep = {"skipped": "--before-only", "exit": 1}
    elif reuse:
        log(f"{pairs}: reusing {here / 'prepared'} (--reuse-prepared)")
        prep = {"reused": True, "exit": 0}
    else:
        log(f"{pairs}: mt prepare")
        prep = run(mt_command() + ["prepare", str(recipe), "--out", str(here / "prepared")],
                   markers={"encoded_s": "mt prepared "})
    manifest = json.loads((here / "prepared" / "manifest.json").read_text()) if not (prep["exit"] or reuse) else {}
    if manifest:
        read = manifest["counts"]["read"]
        prep["pairs_per_s"] = round(read / max(manifest["seconds"]["encode"], 1e-9))
        prep["encode_s"] = manifest["seconds"]["encode"]
        prep["vocab_s"] = manifest["seconds"]["vocab"]
        # what 2 cores of our own would do: pairs per CPU-second of the encoding pass (main process and
        # workers), times 2 (the pass is parallel: workers encode while the main process reads and writes)
        prep["encode_cpu_s"] = manifest["cpu_seconds"]["encode"]
        prep["vocab_cpu_s"] = manifest["cpu_seconds"]["vocab"]
        prep["pairs_per_s_2_cores_from_cpu_time"] = round(2 * read / max(manifest["cpu_seconds"]["encode"], 1e-9))
        prep["workers"] = manifest["workers"]
        prep["prepared_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    doc["prepare"] = prep

    if not prep["exit"]:
        log(f"{pairs}: start-up steps on the prepared corpus, in one process")
        doc["startup_breakdown"] = startup_probe(here / "prepared", recipe)

    if not args.before_only:
        log(f"{pairs}: mt train on the prepared corpus")
        after = run(mt_command() + ["train", str(recipe), "--run-dir", str(here / "after-prepared"),
                                    "--set", f"data.prepared={here / 'prepared'}"])
        after["tokens_per_s"] = tokens_per_s(here / "after-prepared")
        doc["train_after_prepared"] = after

        log(f"{pairs}: mt train --resume of that run (one more log window)")
        resumed = run(mt_command() + ["train", "--resume", str(here / "after-prepared"),
                                      "--set", f"train.max_steps={args.steps + args.log_every}"])
        doc["resume_after"] = resumed

    if args.raw and not args.before_only:
        log(f"{pairs}: mt train on the raw recipe (prepares into the run directory first)")
        raw = run(mt_command() + ["train", str(recipe), "--run-dir", str(here / "after-raw")])
        raw["tokens_per_s"] = tokens_per_s(here / "after-raw")
        doc["train_after_raw"] = raw

    if args.old and pairs <= args.old_max_pairs:
        cmd, env, _ = checkout_command(args.old)
        old_recipe = here / "recipe-old.yaml"  # the old recipe schema: no dedup key
        old_recipe.write_text(recipe.read_text().replace("  dedup: false\n", ""))
        log(f"{pairs}: mt train with the old code ({args.old})")
        # cwd: the old checkout (python -m puts the working directory first on sys.path)
        before = run(cmd + ["train", str(old_recipe), "--run-dir", str(here / "before")], env=env, cwd=args.old)
        before["tokens_per_s"] = tokens_per_s(here / "before")
        doc["train_before"] = before
    elif args.old:
        doc["train_before"] = {"skipped": f"more than --old-max-pairs {args.old_max_pairs} pairs: the old code "
                                          "holds the corpus in Python lists (about 1.5 GB per million pairs)"}
    if not args.keep:
        for name in ("after-prepared", "after-raw", "before"):
            shutil.rmtree(here / name, ignore_errors=True)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000", help="corpus sizes in pairs, comma-separated")
    ap.add_argument("--large", action="store_true", help="sizes 100000,1000000,10000000")
    ap.add_argument("--work", type=Path, default=WORK,
                    help="where corpora and runs go (default ../bench-data, beside the repository)")
    ap.add_argument("--data", type=Path, default=M30K, help="Multi30k folder (train.en.gz, train.de.gz)")
    ap.add_argument("--old", type=Path, help="checkout of an older mt to measure as 'before'")
    ap.add_argument("--old-max-pairs", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument("--vocab-sentences", type=int, default=1_000_000, help="vocab.max_sentences")
    ap.add_argument("--raw", action="store_true", help="also time mt train on the raw recipe")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--before-only", action="store_true", help="measure the --old checkout only")
    ap.add_argument("--reuse-prepared", action="store_true",
                    help="reuse a prepared directory left in --work by an earlier run (skip mt prepare)")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    sizes = [100_000, 1_000_000, 10_000_000] if args.large else [int(x) for x in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    log(f"disk free under {args.work}: {shutil.disk_usage(args.work).free / 2**30:.1f} GiB")

    doc: dict[str, Any] = {
        "benchmark": "data_scale",
        "machine": {"cpus": os.cpu_count(), "processor": _cpu_model(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "model": "transformer d_model 128, 3+3 layers, ff 512, joint 5000-piece unigram vocabulary",
        "corpus": "Multi30k train en->de repeated to N pairs (plain text), data.dedup false",
        "steps": args.steps, "log_every": args.log_every,
        "sizes": [],
    }
    for n in sizes:
        doc["sizes"].append(measure(n, args))
        log(json.dumps(doc["sizes"][-1]))
    doc["machine"]["load_average_at_end"] = os.getloadavg()
    text = json.dumps(doc, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
