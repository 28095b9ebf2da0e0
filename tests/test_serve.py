"""`mt serve`: real server processes on 127.0.0.1 (a free port chosen by the OS) driven with httpx.

Three servers on the tiny run: a normal one (endpoints, limits, bad input, 50 concurrent requests
equal to unbatched decoding), a strict one whose batch wait outlasts its timeout and whose queue
holds one request (503 with Retry-After, 504), and one that gets SIGTERM with a request in flight.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import assert_clean_failure, mt_command, mt_env, run_mt
from mt import MTError
from mt.serve.process import ServerProcess

TEXTS = [
    "two birds watch these friends in ships.",
    "the tired bird feeds this brave chair in the teacher.",
    "red heavy letters see a lazy car under the happy king.",
    "a king",
    "the farmers chase the trees from a big blue mouse, but the city likes the bakers.",
    "apples watch the men.",
    "",
    "the happy small village sees the old ships near two brave teachers.",
]


def start_server(run: Path, *options: str) -> ServerProcess:
    """`mt serve -m RUN --port 0 OPTIONS`, once it answers /health."""
    try:
        return ServerProcess.start([*mt_command(), "serve", "-m", str(run), "--port", "0", *options], env=mt_env())
    except MTError as e:
        pytest.fail(str(e))


def stop_server(server: ServerProcess) -> None:
    server.stop()


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> Iterator[ServerProcess]:
    s = start_server(tiny_run, "--max-texts", "8", "--max-chars", "300", "--max-body", "4096", "--max-beam", "6",
                     "--max-output-tokens", "500", "--threads", "1")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def unbatched(tiny_run: Path):
    """translate(texts, **options): each text decoded alone (batch of one) by the library."""
    from mt.decode.search import build_search
    from mt.decode.translator import Translator, load_run

    run = load_run(tiny_run)

    def translate(texts: list[str], prefixes: list[str] | None = None, **decode) -> list[str]:
        translator = Translator(run.model, run.src_vocab, run.tgt_vocab,
                                build_search(replace(run.config.decode, **decode)))
        if prefixes is None:
            return [translator.translate([t])[0].text for t in texts]
        return [translator.translate([t], prefixes=[p])[0].text for t, p in zip(texts, prefixes)]

    return translate


def post(server: ServerProcess, body, **kwargs) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(server.url + "/translate", json=body, timeout=60, **kwargs)
    return httpx.post(server.url + "/translate", content=body, timeout=60, **kwargs)


def error_of(r: httpx.Response, status: int, *fragments: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["status"] == status and err["type"] and err["message"], err
    for f in fragments:
        assert f in err["message"], err
    return err


# -- endpoints -----------------------------------------------------------------------------------
def test_translate_equals_mt_translate(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    r = post(server, {"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tiny_run.name
    got = [t["translation"] for t in body["translations"]]
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    cli = run_mt("translate", "-m", tiny_run, "-i", tmp_path / "in.txt", "--device", "cpu")
    assert cli.returncode == 0, cli.explain()
    assert got == cli.stdout.split("\n")[:-1]
    assert got[TEXTS.index("")] == ""
    assert all(isinstance(t["score"], float) and "nbest" not in t for t in body["translations"])


def test_alignments_and_token_scores_as_mt_translate_json(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    texts = TEXTS[:3]
    r = post(server, {"texts": texts, "alignments": True})
    assert r.status_code == 200, r.text
    got = r.json()["translations"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    cli = run_mt("translate", "-m", tiny_run, "-i", tmp_path / "in.txt", "--json", "--device", "cpu")
    assert cli.returncode == 0, cli.explain()
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    for g, e in zip(got, expected):
        assert (g["translation"], g["tokens"], g["alignment"]) == (e["translation"], e["tokens"], e["alignment"])
        assert g["token_scores"] == pytest.approx(e["token_scores"], abs=1e-4)
        assert g["tokens"][-1] == "</s>" and len(g["token_scores"]) == len(g["tokens"])
    plain = post(server, {"texts": texts}).json()["translations"]
    assert all("alignment" not in t and t["tokens"] for t in plain)


def test_unseen_words_are_copied_as_by_mt_translate(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    texts = ["the big Москва helps a blue door.", "a cat sees the house."]
    got = [t["translation"] for t in post(server, {"texts": texts}).json()["translations"]]
    off = [t["translation"] for t in post(server, {"texts": texts, "copy_unseen": False}).json()["translations"]]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    cli = run_mt("translate", "-m", tiny_run, "-i", tmp_path / "in.txt", "--device", "cpu")
    assert cli.returncode == 0, cli.explain()
    assert got == cli.stdout.split("\n")[:-1]
    assert "Москва" in got[0].split() and "Москва" not in off[0] and got[1] == off[1]


def test_single_text_and_empty_list(server: ServerProcess, unbatched) -> None:
    r = post(server, {"text": TEXTS[0]})
    assert r.status_code == 200, r.text
    assert [t["translation"] for t in r.json()["translations"]] == unbatched(TEXTS[:1])
    r = post(server, {"texts": []})
    assert r.status_code == 200 and r.json()["translations"] == [], r.text


def test_decoding_options_per_request(server: ServerProcess, unbatched) -> None:
    r = post(server, {"texts": TEXTS[:4], "beam": 3, "n_best": 2, "len_penalty": "d2l", "alpha": 1.0})
    assert r.status_code == 200, r.text
    out = r.json()["translations"]
    assert [t["translation"] for t in out] == unbatched(TEXTS[:4], search="beam", beam=3, len_penalty="d2l", alpha=1.0)
    for t in out:
        assert len(t["nbest"]) == 2 and t["nbest"][0] == {"translation": t["translation"], "score": t["score"]}
        assert t["nbest"][0]["score"] >= t["nbest"][1]["score"]
    r = post(server, {"texts": TEXTS[:2], "greedy": True, "max_len_a": 0.0, "max_len_b": 3})
    assert r.status_code == 200, r.text
    assert [t["translation"] for t in r.json()["translations"]] == unbatched(TEXTS[:2], search="greedy", max_len_a=0.0, max_len_b=3)
    sampled = [post(server, {"texts": TEXTS[:3], "sample": True, "seed": 7, "n_best": 2}).json() for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]["translations"][0]["nbest"]) == 2


def test_health_info_and_openapi(server: ServerProcess, tiny_run: Path) -> None:
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {tiny_run.name}
    info = httpx.get(server.url + "/info").json()
    m = info["models"][0]
    assert info["default_model"] == m["name"] == tiny_run.name
    assert (m["source_language"], m["target_language"]) == ("en", "de")
    assert m["architecture"]["arch"] == "transformer" and m["architecture"]["d_model"] == 32
    assert m["vocabulary"]["source_size"] == 200 and m["decoding"]["search"] == "greedy"
    assert info["limits"]["max_texts"] == 8 and info["mt_version"]
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/translate"]["post"]["requestBody"]["content"]["application/json"]
    assert "texts" in body["schema"]["properties"] and body["schema"]["additionalProperties"] is False
    example = body["examples"]["texts"]["value"]
    # the documented example is a request the server accepts
    assert post(server, example).status_code == 200
    assert {"413", "422", "503", "504"} <= set(spec["paths"]["/translate"]["post"]["responses"])
    assert httpx.get(server.url + "/docs").status_code == 200


# -- limits and bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, fragments", [
    ({"texts": ["a"] * 9}, 413, ["9 texts", "limit is 8"]),
    ({"texts": ["a", "b" * 301]}, 413, ["texts[1]", "301 characters", "300"]),
    (b"{bad json", 400, ["not valid JSON", "line 1"]),
    (b'{"text": "caf\xe9"}', 400, ["not valid UTF-8", "byte 13"]),
    (b'{"text": "\\ud800"}', 400, ["lone surrogate"]),
    ({"texts": ["a", 3]}, 422, ["texts[1]", "valid string"]),
    ({"text": ["a"]}, 422, ["text", "valid string"]),
    ({"text": "a", "beam": "5"}, 422, ["beam", "valid integer"]),
    ({"text": "a", "beam": 0}, 422, ["beam"]),
    ({"text": "a", "beam_size": 5}, 422, ["unknown option 'beam_size'", "known:"]),
    ({"text": "a", "texts": ["b"]}, 422, ["either"]),
    ({}, 422, ["either"]),
    ([1, 2], 422, ["JSON object"]),
    ({"text": "a", "beam": 7}, 422, ["limit (6)"]),
    ({"text": "a", "greedy": True, "beam": 2}, 422, ["one of beam, greedy and sample"]),
    ({"text": "a", "greedy": True, "n_best": 2}, 422, ["n_best > 1"]),
    ({"text": "a", "beam": 2, "n_best": 3}, 422, ["cannot exceed"]),
    ({"text": "a", "topp": 1.5}, 422, ["topp"]),
    ({"text": "a", "model": "nope"}, 404, ["no model named 'nope'"]),
    ({"texts": ["a"], "prefix": "b"}, 422, ['"prefix" goes with "text"']),
    ({"text": "a", "prefixes": ["b"]}, 422, ['"prefixes" goes with "texts"']),
    ({"texts": ["a", "b"], "prefixes": ["c"]}, 422, ["1 prefixes for 2 texts"]),
    ({"texts": ["a"], "prefixes": [3]}, 422, ["prefixes[0]", "valid string"]),
    ({"text": "a", "prefix": "b" * 301}, 413, ["prefix has 301 characters"]),
    ({"text": "a", "prefix": "a " * 149 + "a"}, 422, ["prefix has", "at most 127"]),
    # the translation length is bounded (--max-output-tokens 500): no request decodes for ever
    ({"text": "a", "min_len": 501}, 422, ["min_len 501", "500 tokens"]),
    ({"text": "a", "max_len_b": 100000000}, 422, ["max_len_b 100000000", "500 tokens"]),
    ({"text": "a", "max_len_a": 1e6}, 422, ["max_len_a", "500 tokens"]),
    # options the model or the search cannot take: a 422, not a 500
    ({"text": "a", "alignments": True, "alignment_layer": 1}, 422, ["alignment_layer 1 does not exist", "1 layers"]),
    ({"text": "a", "alignments": True, "alignment_layer": -2}, 422, ["alignment_layer -2"]),
    ({"text": "a", "sample": True, "seed": 2**63}, 422, ["seed"]),
    ({"text": "a", "sample": True, "seed": -1}, 422, ["seed"]),
    (b'{"text": "a", "alpha": NaN}', 400, ["NaN is not a JSON number"]),
    (b'{"text": "a", "max_len_a": Infinity}', 400, ["Infinity is not a JSON number"]),
    (b'{"text": "a", "temperature": -Infinity}', 400, ["-Infinity"]),
], ids=lambda v: None)
def test_bad_requests(server: ServerProcess, body, status: int, fragments: list[str]) -> None:
    error_of(post(server, body), status, *fragments)


def test_options_at_their_limits(server: ServerProcess) -> None:
    assert post(server, {"text": "a", "alignments": True, "alignment_layer": -1}).status_code == 200
    assert post(server, {"text": "a", "sample": True, "seed": 2**63 - 1}).status_code == 200


def test_search_length_cap(tiny_run: Path) -> None:
    import torch

    from mt.decode.search import build_search
    from mt.decode.translator import load_run

    run = load_run(tiny_run)
    decode = replace(run.config.decode, max_len_a=1000.0, max_len_b=1000)
    lengths = torch.tensor([3, 20])
    assert build_search(decode).max_lengths(run.model, lengths).tolist() == [127, 127]  # the model's positions
    assert build_search(decode, max_len_cap=7).max_lengths(run.model, lengths).tolist() == [7, 7]
    assert build_search(replace(decode, max_len_a=0.5, max_len_b=1), max_len_cap=7).max_lengths(
        run.model, lengths).tolist() == [2, 7]


def test_target_prefixes(server: ServerProcess, unbatched) -> None:
    plain = unbatched(TEXTS[:4])
    # texts 0 and 2 get a prefix that is not how they would start: a word of another translation
    words = sorted({w for t in unbatched(TEXTS) for w in t.split()})
    prefixes = [next(w for w in words if not plain[i].startswith(w)) if i % 2 == 0 else "" for i in range(4)]
    expected = unbatched(TEXTS[:4], prefixes)
    r = post(server, {"texts": TEXTS[:4], "prefixes": prefixes})
    assert r.status_code == 200, r.text
    got = [t["translation"] for t in r.json()["translations"]]
    assert got == expected
    assert all(g.startswith(p) for g, p in zip(got, prefixes)) and got[1] == plain[1] and got[0] != plain[0]
    r = post(server, {"text": TEXTS[0], "prefix": prefixes[0], "beam": 3})
    assert r.json()["translations"][0]["translation"] == unbatched(TEXTS[:1], prefixes[:1], search="beam", beam=3)[0]

    # concurrent prefixed and plain requests batch together and get what each gets alone
    requests = [{"text": TEXTS[i % 4], "prefix": prefixes[i % 4]} if i % 3 else {"text": TEXTS[i % 4]} for i in range(12)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(server.url + "/translate", json=b) for b in requests))

    for body, r in zip(requests, asyncio.run(fire())):
        assert r.status_code == 200, r.text
        i = TEXTS.index(body["text"])
        assert r.json()["translations"][0]["translation"] == (expected[i] if "prefix" in body else plain[i])


def test_body_size_limit(server: ServerProcess) -> None:
    big = json.dumps({"texts": ["x" * 250] * 8, "pad": " " * 3000}).encode()
    error_of(post(server, big), 413, "limit is 4096")

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(10):
            yield b" " * 1000

    error_of(httpx.post(server.url + "/translate", content=chunks(), timeout=60), 413, "4096")


def test_unknown_path_and_method_are_json(server: ServerProcess) -> None:
    error_of(httpx.get(server.url + "/nope"), 404)
    error_of(httpx.get(server.url + "/translate"), 405)


def test_concurrent_requests_are_batched_and_equal_unbatched(server: ServerProcess, unbatched) -> None:
    before = httpx.get(server.url + "/health").json()["models"]
    requests = [[TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 3)] for i in range(50)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*(client.post(server.url + "/translate", json={"texts": t}) for t in requests))

    responses = asyncio.run(fire())
    expected = dict(zip(TEXTS, unbatched(TEXTS)))
    for texts, r in zip(requests, responses):
        assert r.status_code == 200, r.text
        assert [t["translation"] for t in r.json()["translations"]] == [expected[t] for t in texts]
    after = httpx.get(server.url + "/health").json()["models"]
    name = next(iter(after))
    requests_done = after[name]["requests"] - before[name]["requests"]
    batches = after[name]["batches"] - before[name]["batches"]
    assert requests_done == 50  # every request decoded once
    assert batches < requests_done, "concurrent requests were not batched together"
    assert after[name]["queued_texts"] == 0 and after[name]["decoding_seconds"] > before[name]["decoding_seconds"]


def test_server_survives_bad_input(server: ServerProcess) -> None:
    for body in (b"\x00\xff" * 100, b'{"texts": [{"a": 1}]}', b"null", b'{"text": "' + "é".encode() * 100 + b'"}'):
        post(server, body)
    assert server.proc.poll() is None
    assert post(server, {"text": TEXTS[0]}).status_code == 200


# -- queue full, timeout, shutdown ---------------------------------------------------------------
def test_queue_full_and_timeout_then_the_worker_goes_on(tiny_run: Path, unbatched) -> None:
    # a batch waits 3 s for company but a request may take 2 s; the queue holds 4 texts; a batch of
    # 20 source tokens is full (decoded at once, without waiting)
    s = start_server(tiny_run, "--queue-size", "4", "--max-texts", "4", "--batch-wait-ms", "3000", "--timeout", "2",
                     "--batch-tokens", "20")
    try:
        results: dict[str, httpx.Response] = {}
        started = time.monotonic()
        first = threading.Thread(target=lambda: results.update(a=post(s, {"texts": ["a"] * 4})))  # 4 short texts
        first.start()
        deadline = time.monotonic() + 5
        while httpx.get(s.url + "/health").json()["models"][tiny_run.name]["queued_texts"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        full = post(s, {"text": TEXTS[0]})
        err = error_of(full, 503, "queue", "full")
        assert int(full.headers["retry-after"]) >= 1, err
        first.join()
        error_of(results["a"], 504, "timeout", "2")
        # the timed-out request left the queue during its batch wait; once that wait is over the
        # worker still runs: a request that fills a batch is answered at once
        time.sleep(max(0.0, started + 3.5 - time.monotonic()))
        health = httpx.get(s.url + "/health")
        assert health.status_code == 200 and health.json()["models"][tiny_run.name]["queued_texts"] == 0, health.text
        later = post(s, {"texts": TEXTS[:3]})
        assert later.status_code == 200, later.text
        assert [t["translation"] for t in later.json()["translations"]] == unbatched(TEXTS[:3])
        assert s.proc.poll() is None
    finally:
        stop_server(s)
    time.sleep(0.1)
    assert "Exception in thread" not in s.stderr() and "Traceback" not in s.stderr(), s.stderr()


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_run: Path, unbatched) -> None:
    s = start_server(tiny_run, "--batch-wait-ms", "1500")  # a request stays in flight 1.5 s
    try:
        results: dict[str, httpx.Response] = {}
        flight = threading.Thread(target=lambda: results.update(a=post(s, {"texts": TEXTS[:3]})))
        flight.start()
        deadline = time.monotonic() + 5
        while httpx.get(s.url + "/health").json()["models"][tiny_run.name]["queued_texts"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # soon no longer accepting (while the request in flight is still answered)
            try:
                httpx.post(s.url + "/translate", json={"text": "a"}, timeout=5)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the server still accepts requests 10 s after SIGTERM"
            time.sleep(0.05)
        flight.join(30)
        assert results["a"].status_code == 200, results["a"].text
        assert [t["translation"] for t in results["a"].json()["translations"]] == unbatched(TEXTS[:3])
        assert s.proc.wait(30) == 0, s.stderr()
        time.sleep(0.1)
        assert "Traceback" not in s.stderr(), s.stderr()
    finally:
        stop_server(s)


# -- command line ----------------------------------------------------------------------------------
def test_bad_command_lines(tiny_run: Path, tmp_path: Path) -> None:
    assert_clean_failure(run_mt("serve", "-m", tmp_path / "nope"), "no such run directory")
    assert_clean_failure(run_mt("serve", "-m", tiny_run, "--max-texts", "0"), "max-texts must be >= 1")
    assert_clean_failure(run_mt("serve", "-m", tiny_run, "--queue-size", "4", "--max-texts", "8"), "--queue-size (4) must hold")
    assert_clean_failure(run_mt("serve", "-m", tiny_run, "-m", tiny_run), "two models are named")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_clean_failure(run_mt("serve", "-m", tiny_run, "--port", str(port)), "cannot listen on 127.0.0.1")


def test_health_is_503_when_a_worker_is_not_running(tiny_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mt.config import ServeLimits
    from mt.serve.app import ServedModel, TranslationService, create_app
    from mt.decode.translator import load_run

    import torch

    service = TranslationService([ServedModel("m", load_run(tiny_run), torch.device("cpu"))], ServeLimits())
    client = TestClient(create_app(service))  # no `with`: the lifespan (which starts the workers) does not run
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text
    assert r.json()["models"]["m"]["worker"] == "stopped"
    with TestClient(create_app(service)) as running:
        r = running.get("/health")
        assert r.status_code == 200 and r.json()["models"]["m"]["worker"] == "running", r.text


def test_decoding_on_the_callers_thread_for_every_model(tiny_run: Path) -> None:
    """decode_thread=False (mt serve): the thread that runs decode_loop decodes every model's batches
    (mt serve's main thread, which loaded the models: one OpenMP pool in the process), the answers
    equal the Translator's, and the loop returns once the app has shut down."""
    from fastapi.testclient import TestClient

    from mt.config import ServeLimits
    from mt.serve.app import ServedModel, TranslationService, create_app
    from mt.decode.translator import load_run

    import torch

    run = load_run(tiny_run)
    service = TranslationService([ServedModel("a", run, torch.device("cpu")), ServedModel("b", run, torch.device("cpu"))],
                                 ServeLimits(), decode_thread=False)
    decoded_on: list[str] = []
    for batcher in service.batchers.values():
        decode = batcher.translate

        def translate(*args, _decode=decode, **kwargs):
            decoded_on.append(threading.current_thread().name)
            return _decode(*args, **kwargs)

        batcher.translate = translate
    answers: dict[str, str] = {}

    def client() -> None:
        with TestClient(create_app(service)) as c:
            for name in ("a", "b"):
                r = c.post("/translate", json={"text": TEXTS[0], "model": name})
                answers[name] = r.json()["translations"][0]["translation"] if r.status_code == 200 else r.text

    http = threading.Thread(target=client, name="http")
    http.start()
    service.decode_loop(keep_going=http.is_alive)  # returns after the lifespan's stop (or the thread's end)
    http.join()
    expected = translator_text(run, TEXTS[0])
    assert answers == {"a": expected, "b": expected}
    assert decoded_on == [threading.current_thread().name] * 2
    assert not service.alive()


def translator_text(run, text: str) -> str:
    from mt.decode.translator import Translator

    return Translator.for_model(run.model, run.src_vocab, run.tgt_vocab, run.config.decode).translate([text])[0].text


def test_the_listening_socket_sends_without_delay() -> None:
    """TCP_NODELAY on mt serve's socket (inherited by its connections): an answer's body does not
    wait for the client's delayed acknowledgement of its headers."""
    import importlib
    import socket

    sock = importlib.import_module("mt.cli.serve")._listen("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY on the connections of such a socket too
    finally:
        sock.close()


def test_output_length_is_capped(tiny_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mt.config import ServeLimits
    from mt.serve.app import ServedModel, TranslationService, create_app
    from mt.decode.translator import load_run

    import torch

    service = TranslationService([ServedModel("m", load_run(tiny_run), torch.device("cpu"))],
                                 ServeLimits(max_output_tokens=12))
    with TestClient(create_app(service)) as client:
        # min_len 12 forbids eos before 12 tokens; a * length + b allows far more; the server's 12 ends it
        r = client.post("/translate", json={"texts": TEXTS[:3], "greedy": True, "min_len": 12, "max_len_a": 12,
                                            "max_len_b": 12})
        assert r.status_code == 200, r.text
        assert [len(t["tokens"]) for t in r.json()["translations"]] == [13, 13, 13]  # 12, then </s>
        r = client.post("/translate", json={"text": TEXTS[2], "greedy": True, "max_len_b": 12, "max_len_a": 12})
        assert len(r.json()["translations"][0]["tokens"]) <= 13, r.text


def test_a_failing_batch_gets_500_and_the_worker_goes_on(tiny_run: Path) -> None:
    from fastapi.testclient import TestClient

    from mt.config import ServeLimits
    from mt.serve.app import ServedModel, TranslationService, create_app
    from mt.decode.translator import load_run

    import torch

    service = TranslationService([ServedModel("m", load_run(tiny_run), torch.device("cpu"))], ServeLimits())
    batcher = service.batchers["m"]
    decode = batcher.translate
    failures = [RuntimeError("out of memory")]

    def translate(*args, **kwargs):  # the first batch fails, as a decoding error would make it
        if failures:
            raise failures.pop()
        return decode(*args, **kwargs)

    batcher.translate = translate
    with TestClient(create_app(service)) as client:
        r = client.post("/translate", json={"text": TEXTS[0]})
        assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"], r.text
        assert client.get("/health").status_code == 200
        r = client.post("/translate", json={"text": TEXTS[0]})
        assert r.status_code == 200 and r.json()["translations"][0]["translation"], r.text


def test_model_names_and_run_folders_with_an_equals_sign(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """-m NAME=RUN names a model; a run folder whose own name holds '=' is still a run, not NAME=RUN."""
    import importlib
    import shutil

    serve_cli = importlib.import_module("mt.cli.serve")
    assert serve_cli._parse_model(f"en-de={tiny_run}") == ("en-de", tiny_run)
    shutil.copytree(tiny_run, tmp_path / "lr=0.1")
    monkeypatch.chdir(tmp_path)
    assert serve_cli._parse_model("lr=0.1") == ("lr=0.1", Path("lr=0.1"))


def test_a_server_that_cannot_start_is_one_error_with_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(MTError, match=r"mt serve did not start:\n.*no-such-run"):
        ServerProcess.start([*mt_command(), "serve", "-m", str(tmp_path / "no-such-run"), "--port", "0"], env=mt_env(),
                            start_timeout=60)
