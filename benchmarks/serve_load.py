"""Load test of `mt serve`: sentences/s and latency under C concurrent clients, beside `mt translate`
on the same lines.

    python benchmarks/serve_load.py RUN [--input FILE] [--requests 300] [--concurrency 1,8,64]
        [--threads 2] [--max-seconds 120] [--serve-args "--batch-wait-ms 5"] [--beam K] [--trace] [--output FILE]

Starts `mt serve -m RUN` on 127.0.0.1 (a free port), sends --requests requests of one line each
(the first --requests lines of --input, default the run's Multi30k test_2016_flickr source) from C
concurrent httpx clients for each C, and records sentences/s, p50/p95/p99 latency, errors (non-200
answers and transport errors) and whether every answer equals `mt translate`'s output for its line.
`mt translate -m RUN` runs on the same lines first (the reference output); its throughput is that
of the same Translator call timed in this process (start-up excluded). Loopback only; every setting stops after
--max-seconds, the server after SIGTERM (its exit status is recorded). Prints one JSON document.

--beam K: beam search of K (requests and mt translate) instead of the run's decoding. --trace: every
request also asks for the beam search's tree ("trace": true, as the web page does; needs beam search:
the run's or --beam's); a traced request is decoded alone, never batched with others. The same
command without --trace is the figure with the trace off.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt import MTError  # noqa: E402
from mt.config import load_config  # noqa: E402
from mt.rundir import CONFIG  # noqa: E402
from mt.serve.process import ServerProcess  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run directory (mt train)")
    p.add_argument("--input", type=Path, default=None,
                   help="source lines (plain or .gz; default DATA/test_2016_flickr.SRC.gz, SRC the run's src_lang)")
    p.add_argument("--data", default=common.DEFAULT_DATA,
                   help="folder with the Multi30k files; relative paths resolve against the repository root "
                        f"(default {common.DEFAULT_DATA})")
    p.add_argument("--requests", type=int, default=300, help="requests per setting, one line each (default 300)")
    p.add_argument("--concurrency", default="1,8,64", help="concurrent clients, comma list (default 1,8,64)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of mt serve and mt translate (default 2)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long per setting")
    p.add_argument("--int8", action="store_true", help="int8 weights in mt serve and mt translate (--int8)")
    p.add_argument("--serve-args", default="", help="more `mt serve` options, e.g. \"--batch-wait-ms 10\"")
    p.add_argument("--beam", type=int, default=None, help="beam search of this size (default: the run's decoding)")
    p.add_argument("--trace", action="store_true", help="every request asks for the search's tree (\"trace\": true)")
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    return p.parse_args()


def mt_command() -> list[str]:
    script = Path(sys.executable).with_name("mt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mt.cli.main"]


def read_source(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line, _ in zip(f, range(n))]
    return lines


def time_translate(run: Path, lines: list[str], threads: int, int8: bool,
                   beam: int | None = None) -> tuple[list[str], dict]:
    """`mt translate` on the lines (its output is the reference; its wall time includes start-up), and
    its throughput without start-up: the same Translator call in this process, timed."""
    extra = (["--int8"] if int8 else []) + (["--beam", str(beam)] if beam is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.txt"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        p = subprocess.run([*mt_command(), "translate", "-m", str(run), "-i", str(src), "--device", "cpu",
                            "--threads", str(threads), *extra], capture_output=True, text=True, encoding="utf-8")
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"mt translate failed:\n{p.stderr}")
        out = p.stdout.split("\n")[:-1]
    from mt.decode.loading import load_for_decoding

    loaded = load_for_decoding([run], device="cpu", int8=int8)
    decode = loaded.run.config.decode if beam is None else loaded.run.config.decode.with_options(beam=beam)
    translator = loaded.translator(decode)  # as mt translate decodes
    translator.translate(lines[:8])  # warm-up
    t0 = time.perf_counter()
    same = [t.text for t in translator.translate(lines)] == out
    seconds = time.perf_counter() - t0
    return out, {"lines": len(lines), "cli_seconds_with_startup": round(wall, 2),
                 "seconds_translating": round(seconds, 2), "sentences_per_second": round(len(lines) / seconds, 2),
                 "in_process_output_equals_cli": same}


def start_server(run: Path, threads: int, extra: list[str]) -> ServerProcess:
    try:
        return ServerProcess.start([*mt_command(), "serve", "-m", str(run), "--host", "127.0.0.1", "--port", "0",
                                    "--threads", str(threads), "--device", "cpu", "--log-level", "warning", *extra],
                                   start_timeout=300, health_timeout=120)
    except MTError as e:
        raise SystemExit(str(e)) from None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def load(url: str, lines: list[str], expected: list[str], clients: int, max_seconds: float,
               options: dict | None = None) -> dict:
    """`clients` workers share a counter over the lines; each sends one line per request (with `options`)."""
    latencies: list[float] = []
    errors: list[str] = []
    mismatches = 0
    next_index = 0
    stop_at = time.monotonic() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index, mismatches
        while next_index < len(lines) and time.monotonic() < stop_at:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/translate", json={"text": lines[i], **(options or {})})
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
            elif (answer := r.json()["translations"][0])["translation"] != expected[i] or (
                    options and options.get("trace") and not answer["trace"]["steps"]):
                mismatches += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    done = len(latencies)
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients, "requests": done, "seconds": round(wall, 2),
        "sentences_per_second": round((done - len([e for e in errors if e[:3].isdigit()])) / wall, 2),
        "latency_ms": {"p50": _r(percentile(ms, 50)), "p95": _r(percentile(ms, 95)), "p99": _r(percentile(ms, 99)),
                       "max": _r(max(ms) if ms else None)},
        "errors": len(errors), "error_examples": errors[:3],
        "equal_to_mt_translate": done - mismatches - len([e for e in errors if e[:3].isdigit()]),
        "stopped_by_time_limit": next_index < len(lines),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def main() -> None:
    args = parse_args()
    cfg = load_config(args.run / CONFIG)
    source = args.input or common.data_dir(args) / f"test_2016_flickr.{cfg.data.src_lang}.gz"
    lines = read_source(source, args.requests)
    serve_extra = shlex.split(args.serve_args) + (["--int8"] if args.int8 else [])
    import torch

    torch.set_num_threads(args.threads)  # this process only measures; recorded as the servers' setting
    env = common.environment(torch.device("cpu"))
    common.log(f"mt translate on {len(lines)} lines of {source}")
    options = {**({"beam": args.beam} if args.beam is not None else {}), **({"trace": True} if args.trace else {})}
    expected, reference = time_translate(args.run, lines, args.threads, args.int8, args.beam)
    server = start_server(args.run, args.threads, serve_extra)
    url = server.url
    results = []
    try:
        for c in common.int_list(args.concurrency):
            common.log(f"{len(lines)} requests from {c} clients")
            asyncio.run(load(url, lines[:min(len(lines), 8)], expected, min(c, 8), 30, options))  # warm-up
            results.append(asyncio.run(load(url, lines, expected, c, args.max_seconds, options)))
            common.log(f"  {results[-1]['sentences_per_second']} sentences/s, p99 {results[-1]['latency_ms']['p99']} ms")
    finally:
        exit_status = server.stop(grace=120)
    doc = {
        "benchmark": "serve_load",
        "run": str(args.run),
        "input": str(source),
        "decoding": "the run's decode section" + (f", beam {args.beam}" if args.beam is not None else ""),
        "trace": args.trace,
        "int8": args.int8,
        "threads": args.threads,
        "serve_args": args.serve_args,
        "mt_translate": reference,
        "serve": results,
        "server_exit_status_after_sigterm": exit_status,
        "environment": {**env, "load_average_end": common.load_average(), "os_cpu_count": os.cpu_count()},
    }
    common.emit(doc, args)


if __name__ == "__main__":
    main()
