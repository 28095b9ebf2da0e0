"""Load test of `mt serve`: sentences/s and latency under C concurrent clients, beside `mt translate`
on the same lines.

    python benchmarks/serve_load.py RUN [--input FILE] [--requests 300] [--concurrency 1,8,64]
        [--threads 2] [--max-seconds 120] [--serve-args "--batch-wait-ms 5"] [--beam K] [--batch-tokens N]
        [--trace] [--output FILE]

Starts `mt serve -m RUN` on 127.0.0.1 (a free port), sends --requests requests of one line each
(the first --requests lines of --input, default the run's Multi30k test_2016_flickr source) from C
concurrent clients for each C (keep-alive connections of a small asyncio HTTP/1.1 client), and
records sentences/s, p50/p95/p99 latency, errors (non-200 answers and transport errors) and whether
every answer equals `mt translate`'s output for its line.
`mt translate -m RUN` runs on the same lines first (the reference output); its throughput is that
of the same Translator call timed in this process (start-up excluded), and one line's time is the
median over the first 100 lines translated one at a time (the figure a lone client's latency is set
beside: p50_over_one_line_alone). Loopback only; every setting stops after
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
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="token budget of a batch for mt serve and mt translate (default: the run's decode.batch_tokens)")
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
                   beam: int | None = None, batch_tokens: int | None = None) -> tuple[list[str], dict]:
    """`mt translate` on the lines (its output is the reference; its wall time includes start-up), and
    its throughput without start-up: the same Translator call in this process, timed."""
    extra = (["--int8"] if int8 else []) + (["--beam", str(beam)] if beam is not None else []) + (
        ["--batch-tokens", str(batch_tokens)] if batch_tokens is not None else [])
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
    translator = loaded.translator(decode, batch_tokens=batch_tokens)  # as mt translate decodes
    translator.translate(lines[:8])  # warm-up
    t0 = time.perf_counter()
    same = [t.text for t in translator.translate(lines)] == out
    seconds = time.perf_counter() - t0
    alone = []  # each line translated alone: what one client's request costs without the server
    for line in lines[:100]:
        t0 = time.perf_counter()
        translator.translate([line])
        alone.append((time.perf_counter() - t0) * 1000)
    return out, {"lines": len(lines), "cli_seconds_with_startup": round(wall, 2),
                 "seconds_translating": round(seconds, 2), "sentences_per_second": round(len(lines) / seconds, 2),
                 "one_line_alone_ms_p50": _r(percentile(alone, 50)), "in_process_output_equals_cli": same}


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


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer: a load generator
    that costs the machine little. httpx's AsyncClient spent about 5.8 ms of CPU per request at 64
    connections on the 2-core development machine (measured with empty texts, which the server
    answers without decoding), more than the server's decoding of a sentence: on a machine the
    server shares with its clients it measured mostly itself."""

    def __init__(self, url: str) -> None:
        address = urlsplit(url)
        self.host, self.port = address.hostname, address.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, doc: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(doc).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            answer = await self.reader.readexactly(int(headers.get("content-length", 0)))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError) as e:
            await self.close()
            raise OSError(f"{type(e).__name__}: {e}") from None
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass
        self.reader = self.writer = None


async def load(url: str, lines: list[str], expected: list[str], clients: int, max_seconds: float,
               options: dict | None = None) -> dict:
    """`clients` workers, each on a connection of its own, share a counter over the lines; each
    sends one line per request (with `options`)."""
    latencies: list[float] = []
    errors: list[str] = []
    mismatches = 0
    next_index = 0
    stop_at = time.monotonic() + max_seconds

    async def worker(connection: Connection) -> None:
        nonlocal next_index, mismatches
        while next_index < len(lines) and time.monotonic() < stop_at:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                status, body = await connection.post("/translate", {"text": lines[i], **(options or {})})
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"{status}: {body[:200].decode(errors='replace')}")
            elif (answer := json.loads(body)["translations"][0])["translation"] != expected[i] or (
                    options and options.get("trace") and not answer["trace"]["steps"]):
                mismatches += 1

    connections = [Connection(url) for _ in range(clients)]
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        wall = time.perf_counter() - t0
        for c in connections:
            await c.close()
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


def server_figures(url: str) -> dict:
    """The served model's counters from GET /health (one model: the benchmark serves one run)."""
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return next(iter(json.load(r)["models"].values()))


def batching(before: dict, after: dict, seconds: float) -> dict:
    """How the server batched a setting's requests: batches, texts per batch, and the share of the
    wall time its decoding loop was decoding (the rest: waiting for requests, HTTP, the clients)."""
    batches = after["batches"] - before["batches"]
    texts = after["texts"] - before["texts"]
    busy = after["decoding_seconds"] - before["decoding_seconds"]
    return {"batches": batches, "texts_per_batch": round(texts / batches, 1) if batches else None,
            "decoding_share_of_wall": round(busy / seconds, 3) if seconds > 0 else None}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def main() -> None:
    args = parse_args()
    cfg = load_config(args.run / CONFIG)
    source = args.input or common.data_dir(args) / f"test_2016_flickr.{cfg.data.src_lang}.gz"
    lines = read_source(source, args.requests)
    serve_extra = shlex.split(args.serve_args) + (["--int8"] if args.int8 else []) + (
        ["--batch-tokens", str(args.batch_tokens)] if args.batch_tokens is not None else [])
    import torch

    torch.set_num_threads(args.threads)  # this process only measures; recorded as the servers' setting
    env = common.environment(torch.device("cpu"))
    common.log(f"mt translate on {len(lines)} lines of {source}")
    options = {**({"beam": args.beam} if args.beam is not None else {}), **({"trace": True} if args.trace else {})}
    expected, reference = time_translate(args.run, lines, args.threads, args.int8, args.beam, args.batch_tokens)
    server = start_server(args.run, args.threads, serve_extra)
    url = server.url
    results = []
    try:
        for c in common.int_list(args.concurrency):
            common.log(f"{len(lines)} requests from {c} clients")
            asyncio.run(load(url, lines[:min(len(lines), 8)], expected, min(c, 8), 30, options))  # warm-up
            before = server_figures(url)
            results.append(asyncio.run(load(url, lines, expected, c, args.max_seconds, options)))
            results[-1]["server"] = batching(before, server_figures(url), results[-1]["seconds"])
            common.log(f"  {results[-1]['sentences_per_second']} sentences/s, p99 {results[-1]['latency_ms']['p99']} ms")
    finally:
        exit_status = server.stop(grace=120)
    for row in results:  # the two figures: throughput against mt translate, one client's latency
        row["over_mt_translate"] = round(row["sentences_per_second"] / reference["sentences_per_second"], 2)
        if row["clients"] == 1 and row["latency_ms"]["p50"] is not None:
            row["p50_over_one_line_alone"] = round(row["latency_ms"]["p50"] / reference["one_line_alone_ms_p50"], 2)
    doc = {
        "benchmark": "serve_load",
        "run": str(args.run),
        "input": str(source),
        "decoding": "the run's decode section" + (f", beam {args.beam}" if args.beam is not None else "") + (
            f", batch_tokens {args.batch_tokens}" if args.batch_tokens is not None else ""),
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
