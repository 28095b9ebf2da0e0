"""Serve trained runs over HTTP (JSON): POST /translate, GET /health, GET /info, OpenAPI page at /docs.
Texts of concurrent requests are decoded together (dynamic batching) on one model instance."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import List, Optional

import typer

from mt import MTError
from mt.cli.options import CHECKPOINT_HELP, check_at_least_one, decode_config, decoding_options, flag
from mt.config import DecodeConfig, ServeLimits, SettingError
from mt.device import check_device, check_precision
from mt.rundir import check_run_dir

EPILOG = """\b
Examples:
  mt serve -m runs/m30k                              # http://127.0.0.1:8000, docs at /docs
  mt serve -m runs/m30k --port 8080 --int8 --threads 4
  mt serve -m en-de=runs/m30k -m de-en=runs/m30k-rev # two models, chosen per request ("model")
  curl -s localhost:8000/translate -H 'Content-Type: application/json' \\
       -d '{"texts": ["A man is riding a bicycle."], "beam": 5}'
\b
Stop it with SIGTERM or Ctrl-C: it stops accepting, answers what is in flight, exits 0.
"""


def _parse_model(spec: str) -> tuple[str, Path]:
    """RUN or NAME=RUN -> (name, run directory); the name defaults to the run's folder name."""
    name, sep, path = spec.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and not Path(spec).is_dir():  # a folder named a=b is a run
        run = Path(path)
    else:
        run, name = Path(spec), Path(spec).resolve().name
    return name, check_run_dir(run)


@decoding_options("serve")
def serve(
    model: List[str] = typer.Option(..., "--model", "-m", help="Run directory, or NAME=RUN; repeat to serve several (the first is the default)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; there is no authentication)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0: any free port, printed at start)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    int8: bool = typer.Option(False, "--int8", help="int8 Linear layers (CPU only), as `mt translate --int8`; measured speed and BLEU: docs/performance.md."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16 (CUDA only), as `mt translate --dtype`."),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP + "."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long a batch waits for more requests."),
    max_texts: int = typer.Option(64, "--max-texts", help="Texts per request."),
    max_chars: int = typer.Option(2000, "--max-chars", help="Characters per text."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="Request body bytes."),
    max_beam: int = typer.Option(16, "--max-beam", help="Largest beam / n-best a request may ask for."),
    queue_size: int = typer.Option(1024, "--queue-size", help="Texts waiting per model; beyond: 503 with Retry-After."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a request may take (queue included); beyond: 504."),
    max_output_tokens: int = typer.Option(1024, "--max-output-tokens", help="Longest translation in tokens (of a text, or of each piece of a long one): a request's min_len, max_len_a or max_len_b above it is refused, a * length + b is cut to it."),
    max_input_tokens: Optional[int] = typer.Option(None, "--max-input-tokens", help="Longer texts are translated in pieces \\[default: 1024 or the model's limit]."),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug (access log at info)."),
    **options,
) -> None:
    # options: the decoding options of the server (mt.cli.options: --batch-tokens), None when not given
    limits = _limits(batch_wait_ms, max_texts=max_texts, max_chars=max_chars, max_body=max_body,
                     queue_size=queue_size, timeout=timeout, max_beam=max_beam, max_output_tokens=max_output_tokens)
    decode_config(DecodeConfig(), **options)  # the options' own checks; each run's settings are its own
    _check(port, log_level, device, dtype, int8, threads=threads, max_input_tokens=max_input_tokens)
    runs = [_parse_model(spec) for spec in model]
    names = [name for name, _ in runs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise MTError(f"two models are named {duplicate!r}: name them with -m NAME=RUN")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MTError(f"mt serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'mt[serve]'") from None

    sock = _listen(host, port)  # before loading: a port in use fails at once
    try:
        service = _load(runs, limits, device, threads, int8, dtype, checkpoint, options["batch_tokens"],
                        max_input_tokens)
        from mt.serve.app import create_app

        app = create_app(service)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"mt serve: listening on http://{shown}:{bound_port} (models: {', '.join(service.models)}; "
              f"docs at /docs)", file=sys.stderr, flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"mt: warning: listening on {host}: anyone who can reach this address can use the server "
                  "(no authentication)", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=timeout + 5,
                                lifespan="on", access_log=log_level in ("info", "debug"))
        _run(config, sock, service)
    finally:
        sock.close()


def _limits(batch_wait_ms: float, **limits) -> ServeLimits:
    """The server's limits (ServeLimits), named by their flags in its messages."""
    if batch_wait_ms < 0:  # in milliseconds here: ServeLimits would name it in seconds
        raise MTError(f"--batch-wait-ms must not be negative, got {batch_wait_ms}")
    try:
        return ServeLimits(batch_wait=batch_wait_ms / 1000, **limits)
    except SettingError as e:
        raise MTError(e.worded(flag)) from None


def _check(port: int, log_level: str, device: str, dtype: str, int8: bool, **at_least_one) -> None:
    """The checks of the command line that need neither torch nor a model."""
    check_at_least_one(**at_least_one)
    if not 0 <= port <= 65535:
        raise MTError(f"--port must be in 0..65535, got {port}")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise MTError(f"--log-level must be critical, error, warning, info or debug, got {log_level!r}")
    check_device(device)
    check_precision(dtype, device, int8)


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MTError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # no Nagle delay: an answer's headers and body are two writes, and the body would wait for the
    # client's delayed acknowledgement of the headers (40 ms on Linux). asyncio sets TCP_NODELAY on
    # the connections of a socket made with IPPROTO_TCP; set here too, the connections inherit it
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise MTError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _load(runs, limits, device, threads, int8, dtype, checkpoint, batch_tokens, max_input_tokens):
    from mt.decode.loading import load_for_decoding
    from mt.serve.app import ServedModel, TranslationService

    served = []
    for name, path in runs:
        loaded = load_for_decoding([path], checkpoints=[checkpoint], device=device, threads=threads, int8=int8,
                                   dtype=dtype)
        served.append(ServedModel(name, loaded.run, loaded.device, batch_tokens, max_input_tokens, loaded.precision,
                                  str(path)))
    return TranslationService(served, limits, decode_thread=False)  # cli serve's main thread decodes


def _run(config, sock: socket.socket, service) -> None:
    """uvicorn on a thread of its own, the decoding loop on this one (the main thread, which loaded
    the models: one thread does all the torch work, see mt.serve.app.TranslationService). SIGTERM
    and SIGINT (a second SIGINT: at once) tell uvicorn to stop accepting and answer what is in
    flight; its shutdown stops the loop once the queues are empty, and the server exits with 0."""
    import signal
    import threading

    import uvicorn

    server = uvicorn.Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mt-serve-http")
    http.start()
    try:
        service.decode_loop(keep_going=http.is_alive)
    finally:
        server.should_exit = True  # the loop failed: let uvicorn go too
        http.join()
    if not server.started:
        raise MTError("the HTTP server did not start (see the lines above)")
