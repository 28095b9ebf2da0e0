"""`mt serve`: translation over HTTP with dynamic batching.

    service = TranslationService([ServedModel("m30k", run, device)], ServeLimits())
    app = create_app(service)            # a FastAPI app; `mt serve` runs it with uvicorn

One model instance per served run, one queue per model and one decoding loop for all of them. A
request's texts join its model's queue; the loop waits a few milliseconds (`ServeLimits.batch_wait`) for
other requests, takes every queued request with the same decoding options up to the translator's
token budget, and decodes their texts together through `mt.decode.translator.Translator`. In float32
a text's translation does not depend on what it was batched with, so a request gets the output
`mt translate` gives.

Errors are JSON (`{"error": {"status", "type", "message"}}`): 4xx for bad requests (limits, invalid
JSON or UTF-8, wrong types, unknown options), 503 with Retry-After when the queue is full, 504 when
a request outlives `ServeLimits.timeout`. The loop survives a failing batch (its requests get a 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from mt import MTError, __version__
from mt.config import SEARCH_SWITCHES, DecodeConfig, ServeLimits, SettingError, decode_options
from mt.decode.search import build_search
from mt.decode.trace import SearchTrace, attention_dict, attention_heads
from mt.decode.translator import Run, Translation, Translator
from mt.serve.page import add_page

log = logging.getLogger("mt.serve.app")


class ServeError(Exception):
    """A request that gets an HTTP error: status, a short type and one readable message."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "type": kind, "message": message}}, status, headers=headers)


# -- the request ---------------------------------------------------------------------------------
#: a traced request (the web page's beam search tree): its beam and the longest translation it may have
TRACE_MAX_BEAM, TRACE_MAX_OUTPUT = 8, 64


@dataclass(frozen=True)
class Look:
    """What a request asks to see inside its one translation (the web page): the search's tree, the
    attention per layer and head."""

    trace: bool = False
    attention: bool = False


class RequestBase(BaseModel):
    """POST /translate. Give `text` or `texts`; every decoding option is optional (default: the
    run's `decode` section, as `mt translate` uses it)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"texts": ["A man is riding a bicycle.", "Two dogs play in the snow."]}]},
    )

    text: str | None = Field(None, description="One text to translate.", examples=["A man is riding a bicycle."])
    texts: list[str] | None = Field(None, description="Texts to translate, answered in this order.",
                                    examples=[["A man is riding a bicycle.", "Two dogs play in the snow."]])
    prefix: str | None = Field(None, description="With text: target text the translation must start with "
                                                 "(the search continues from it, as `mt translate --prefix-file`).",
                               examples=["Ein Mann"])
    prefixes: list[str] | None = Field(None, description="With texts: one target prefix per text (\"\" for none).")
    constraints: list[str] | list[list[str]] | None = Field(
        None, description="Phrases the translation must contain (beam search; as `mt translate --constraints`): "
                          "with text a list of strings, with texts one list per text ([] for none).",
        examples=[["Vertrag"]])
    avoid: list[str] | list[list[str]] | None = Field(
        None, description="Phrases the translation must not contain: with text a list of strings, with texts one "
                          "list per text ([] for none).")
    model: str | None = Field(None, description="Served model name (GET /info); default: the first one.")
    alignments: bool = Field(False, description="Add each translation's word alignment from the attention "
                                                "(pairs [source word, target word], as `mt translate --alignments`).")
    trace: bool = Field(False, description="With text: add the beam search's tree (per step the candidates, the "
                                           "kept hypotheses, the finished ones and the returned path; "
                                           "mt.decode.trace), as `mt translate --trace`. Beam search of at most "
                                           f"{TRACE_MAX_BEAM}, translations of at most {TRACE_MAX_OUTPUT} pieces.")
    attention: bool = Field(False, description="With text: add the translation's cross-attention per decoder "
                                               "layer and head (teacher-forced; an RNN's one attention).")


def request_model(cls: type | None = None) -> type[RequestBase]:
    """The request of POST /translate: RequestBase's fields and one optional field per decoding option
    of `cls` (default DecodeConfig) that requests take, with its declared bounds and help (the search
    switches greedy and sample follow the beam size)."""
    fields: dict[str, Any] = {}
    for name, tp, option in decode_options(cls, "request"):
        fields[name] = (Optional[tp], Field(None, ge=option.ge, gt=option.gt, le=option.le,
                                            description=f"{option.help} Default: the run's decode.{name}."))
        if name == "beam":
            fields.update({switch: (bool, Field(False, description=help)) for switch, help in SEARCH_SWITCHES.items()})
    return create_model("TranslateRequest", __base__=RequestBase, __doc__=RequestBase.__doc__, **fields)


TranslateRequest = request_model()


class Hyp(BaseModel):
    translation: str
    score: float


class TranslationOut(BaseModel):
    translation: str = Field(examples=["Ein Mann fährt Fahrrad."])
    score: float = Field(description="Log-probability after the length penalty.", examples=[-0.42])
    nbest: list[Hyp] | None = Field(None, description="With n_best > 1: the hypotheses, best first.")
    pieces: int | None = Field(None, description="Set when a text longer than the model's limit was cut into pieces.")
    tokens: list[str] = Field(description="The best hypothesis's target pieces, then </s>.", examples=[["▁Ein", "▁Mann", "</s>"]])
    token_scores: list[float] = Field(description="Log-probability of each of `tokens`.", examples=[[-0.1, -0.2, -0.05]])
    alignment: list[list[int]] | None = Field(None, description="With alignments: [source word, target word] pairs.")
    copies: list[int] | None = Field(None, description="The translation's words (whitespace-separated, from 0) that "
                                                       "are source words copied in by copy_unseen.")
    trace: dict[str, Any] | None = Field(None, description="With trace: the beam search's tree (mt.decode.trace).")
    attention: dict[str, Any] | None = Field(None, description="With attention: source and target pieces (with "
                                                               "</s>) and weights[layer][head][target][source].")


class TranslateResponse(BaseModel):
    model: str = Field(examples=["m30k"])
    translations: list[TranslationOut]


REQUEST_EXAMPLES = {
    "texts": {"summary": "Several texts, the run's decoding options",
              "value": {"texts": ["A man is riding a bicycle.", "Two dogs play in the snow."]}},
    "text": {"summary": "One text, greedy", "value": {"text": "A little girl is climbing a tree.", "greedy": True}},
    "nbest": {"summary": "3-best list of a beam of 5",
              "value": {"text": "A woman sings on a stage.", "beam": 5, "n_best": 3}},
    "prefix": {"summary": "A translation that starts with a given prefix",
               "value": {"text": "A man is riding a bicycle.", "prefix": "Ein Mann"}},
    "alignments": {"summary": "Word alignments", "value": {"text": "Two dogs play in the snow.", "alignments": True}},
}
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "status": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}}}}}


def _error_doc(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": ERROR_SCHEMA, "example": {"error": {"status": 0, "type": "...", "message": example}}}}}


def request_decode(base: DecodeConfig, req: RequestBase, limits: ServeLimits, decoder_layers: int | None = None) -> DecodeConfig:
    """The run's decoding section with the request's options, as `mt translate` combines them.
    decoder_layers: the model's (Transformer) decoder layers, which alignment_layer and copy_layer
    must name."""
    max_beam, max_out = limits.max_beam, limits.max_output_tokens
    for name in ("min_len", "max_len_b", "max_len_a"):
        value = getattr(req, name)
        if value is not None and value > max_out:
            raise ServeError(422, "invalid_options", f"{name} {value} is above this server's limit on the "
                                                     f"translation length ({max_out} tokens)")
    for name in ("alignment_layer", "copy_layer"):
        layer = getattr(req, name)
        if layer is not None and decoder_layers is not None and not -decoder_layers <= layer < decoder_layers:
            raise ServeError(422, "invalid_options", f"{name} {layer} does not exist: the model's decoder has "
                                                     f"{decoder_layers} layers (0..{decoder_layers - 1}, or "
                                                     f"-1..-{decoder_layers})")
    for name in ("beam", "n_best"):
        value = getattr(req, name)
        if value is not None and value > max_beam:
            raise ServeError(422, "invalid_options", f"{name} {value} is above this server's limit ({max_beam})")
    options = {name: getattr(req, name) for name, _, _ in decode_options(type(base), "request")}
    try:  # combined as mt translate combines them; messages name the options as the request does
        decode = base.with_options(greedy=req.greedy, sample=req.sample, **options)
    except SettingError as e:
        raise ServeError(422, "invalid_options", e.worded(lambda key: key)) from None
    except MTError as e:
        raise ServeError(422, "invalid_options", str(e)) from None
    if decode.min_len > max_out:
        raise ServeError(422, "invalid_options", f"min_len {decode.min_len} (the run's) is above this server's limit "
                                                 f"on the translation length ({max_out} tokens)")
    if decode.search == "beam" and decode.beam > max_beam:
        raise ServeError(422, "invalid_options", f"beam {decode.beam} is above this server's limit ({max_beam})")
    return decode


# -- batching ------------------------------------------------------------------------------------
class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    texts: list[str]
    decode: DecodeConfig
    cost: int  # source tokens (eos included) x decoder rows per text: the batch budget's unit
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    alignments: bool = False
    prefixes: list[str] | None = None  # target prefixes, one per text
    look: Look | None = None  # a look inside its one text (trace, attention): decoded alone
    # jobs batch together when their keys are equal; sampling depends on the batch, so it never does
    key: Any = None
    ids: list[list[int]] | None = None  # the texts' source segmentation, made once to price the job
    arrived: float = field(default_factory=time.monotonic)
    started: bool = False
    cancelled: bool = False
    controls: list[dict[str, list[str]]] | None = None  # per text: its "constraints" and "avoid" phrases

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the result to the request's event loop (called from the decoding loop); nothing when
        that loop has closed (the request is gone)."""
        def done() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the event loop is closed
            pass


@dataclass
class ServedModel:
    """A loaded run served under `name` (decoded by the service's decoding loop)."""

    name: str
    run: Run
    device: torch.device
    batch_tokens: int | None = None  # default: the run's decode.batch_tokens
    max_input_tokens: int | None = None
    precision: str = "float32"  # float32, int8, bfloat16, float16 (shown by /info)
    path: str = ""


class Batcher:
    """The queue of one model: requests in, batches of equal decoding options out (taken by the
    service's decoding loop, which serves every model's queue)."""

    def __init__(self, served: ServedModel, limits: ServeLimits, cond: threading.Condition) -> None:
        self.served, self.limits = served, limits
        self.cond = cond  # the service's: one decoding loop waits for every queue
        self.pending: deque[Job] = deque()
        self.pending_texts = 0
        self.stopping = False
        self.rate = 0.0  # texts per second, moving average (for Retry-After)
        self.batches = self.requests = self.texts = 0  # decoded so far (GET /health)
        self.busy = 0.0  # seconds spent decoding

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise ServeError(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"})
            if self.pending_texts + len(job.texts) > self.limits.queue_size:
                retry = math.ceil(self.pending_texts / self.rate) if self.rate > 0 else 1
                raise QueueFull(min(max(retry, 1), 60))
            self.pending.append(job)
            self.pending_texts += len(job.texts)
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        """A request that timed out: drop it if no batch has taken it yet (and wake the decoding loop,
        which may be waiting on this job's batch wait)."""
        with self.cond:
            if not job.started and not job.cancelled:
                job.cancelled = True
                self.pending.remove(job)
                self.pending_texts -= len(job.texts)
                self.cond.notify_all()

    def due(self) -> float:
        """When the first queued job's batch should be decoded (the service's condition held, a job
        queued): once it has waited batch_wait (a job that queued while the batch before decoded
        waits no longer), at once when its key's queued jobs fill the token budget or the server stops."""
        first = self.pending[0]
        budget = self.served.batch_tokens or first.decode.batch_tokens
        if self.stopping or sum(j.cost for j in self.pending if j.key == first.key) >= budget:
            return first.arrived
        return first.arrived + self.limits.batch_wait

    def take(self) -> list[Job]:
        """The first queued job and every queued job with its key, in arrival order, within the token
        budget (the service's condition held)."""
        first = self.pending[0]
        budget = self.served.batch_tokens or first.decode.batch_tokens
        taken, used = [], 0
        for job in list(self.pending):
            if job.key != first.key:
                continue
            if taken and used + job.cost > budget:
                break
            taken.append(job)
            used += job.cost
        for job in taken:
            self.pending.remove(job)
            job.started = True
        self.pending_texts -= sum(len(j.texts) for j in taken)
        return taken

    def run(self, jobs: list[Job]) -> None:
        """Decode a batch and answer its requests; a failing batch answers them with the error (the
        loop goes on)."""
        try:
            self._decode(jobs)
        except Exception as e:  # noqa: BLE001 - the decoding loop outlives a failing batch
            if not isinstance(e, ServeError):
                log.exception("batch of %d requests failed", len(jobs))
            error = e if isinstance(e, ServeError) else ServeError(500, "translation_failed", f"{type(e).__name__}: {e}")
            for job in jobs:
                job.resolve(error=error)

    def _decode(self, jobs: list[Job]) -> None:
        started = time.monotonic()
        texts = [t for j in jobs for t in j.texts]
        # prefixed and plain texts share a batch: "" is no prefix, and a text's output does not depend on the others'
        prefixes = [p for j in jobs for p in (j.prefixes or [""] * len(j.texts))] if any(j.prefixes for j in jobs) else None
        ids = [i for j in jobs for i in j.ids] if all(j.ids is not None for j in jobs) else None
        controls = [c for j in jobs for c in (j.controls or [{}] * len(j.texts))] if any(j.controls for j in jobs) else None
        if jobs[0].look is not None:  # alone in its batch: its key is its own
            results: list[Any] = self.look_inside(jobs[0])
        else:
            results = self.translate(jobs[0].decode, texts, jobs[0].alignments, prefixes, ids, controls)
        # counted before the answers go out: a client that has its answer finds it in GET /health
        self.batches, self.requests, self.texts = self.batches + 1, self.requests + len(jobs), self.texts + len(results)
        elapsed = time.monotonic() - started
        self.busy += elapsed
        rate = len(results) / max(elapsed, 1e-6)
        self.rate = rate if self.rate == 0 else 0.8 * self.rate + 0.2 * rate
        pos = 0
        for job in jobs:
            job.resolve(results[pos: pos + len(job.texts)])
            pos += len(job.texts)

    def translate(self, decode: DecodeConfig, texts: list[str], alignments: bool = False,
                  prefixes: list[str] | None = None, ids: list[list[int]] | None = None,
                  controls: list[dict[str, list[str]]] | None = None) -> list[Translation]:
        """Decode one batch; ids: the texts' source segmentation when already made (to price them);
        controls: per text, its constraints and avoid list."""
        return self._translator(decode, alignments).translate(texts, prefixes=prefixes, encoded=ids,
                                                              **phrase_lists(controls))

    def _translator(self, decode: DecodeConfig, alignments: bool) -> Translator:
        s = self.served
        # one loop decodes, a batch at a time: the model's attention layer holds for this batch (alignments, copies)
        return Translator.for_model(s.run.model, s.run.src_vocab, s.run.tgt_vocab, decode, s.device,
                                    alignments=alignments, max_len_cap=self.limits.max_output_tokens,
                                    batch_tokens=s.batch_tokens, max_input_tokens=s.max_input_tokens,
                                    warn=lambda msg: log.warning("%s", msg))

    def look_inside(self, job: Job) -> list[tuple[Translation, dict[str, Any]]]:
        """A job of one text translated as `translate` does, with what job.look asks for: the beam
        search's tree, recorded by the search itself (mt.decode.trace), and the translation's
        cross-attention per layer and head (teacher-forced on its pieces)."""
        run, look = self.served.run, job.look or Look()
        translator = self._translator(job.decode, job.alignments)
        trace = SearchTrace() if look.trace else None
        translator.search.trace = trace  # a search of this request only (build_search makes a new one)
        tr = translator.translate(job.texts, prefixes=job.prefixes, encoded=job.ids, **phrase_lists(job.controls))[0]
        if tr.pieces > 1:
            raise ServeError(422, "text_too_long", f"the text was translated in {tr.pieces} pieces (longer than the "
                                                   "model's input): trace and attention need it in one")
        extras: dict[str, Any] = {}
        tgt_ids = tr.token_ids  # the returned hypothesis's
        if trace is not None:
            extras["trace"] = trace.trees[0].to_dict(run.tgt_vocab.pieces, job.decode.n_best, tgt_ids) \
                if trace.trees else None
        if look.attention and tr.tokens:
            weights = attention_heads(run.model, tr.src_ids, tgt_ids, self.served.device)
            extras["attention"] = None if weights is None else attention_dict(weights, tr.src_pieces, tr.tokens)
        return [(tr, extras)]


class TranslationService:
    """The served models, their queues, the decoding loop and the limits: everything the HTTP layer calls.

    One loop decodes for every model, batch after batch, the batch that is due first. It runs on a
    thread of its own (`start`), or, with decode_thread=False, on the thread that calls
    `decode_loop` (`mt serve` runs it on the main thread, and uvicorn on another). One thread does
    all the torch work of a process because torch's CPU thread pool is OpenMP's, and OpenMP keeps a
    pool per calling thread: with a second one alive (the thread that loaded the models has one),
    GNU OpenMP has more threads than cores and stops spinning between parallel regions, so each of
    the search's many small operations waits for its threads to wake (measured: docs/serving.md)."""

    #: longest wait of the decoding loop before it looks at keep_going again (seconds)
    POLL = 0.5

    def __init__(self, models: list[ServedModel], limits: ServeLimits, decode_thread: bool = True) -> None:
        if not models:
            raise MTError("no model to serve")
        names = [m.name for m in models]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise MTError(f"two models are named {duplicate!r}: name them with -m NAME=RUN")
        self.models = {m.name: m for m in models}
        self.default = models[0].name
        self.limits = limits
        self.cond = threading.Condition()
        self.batchers = {m.name: Batcher(m, limits, self.cond) for m in models}
        self.started_at = time.time()
        self.decode_thread = decode_thread
        self.thread: threading.Thread | None = None
        self.running = False  # the decoding loop runs (GET /health)
        self.finished = threading.Event()  # the decoding loop has returned

    def start(self) -> None:
        """Start the decoding loop on a thread of its own (nothing with decode_thread=False: the
        owner runs decode_loop)."""
        if self.decode_thread:
            self.running = True
            self.thread = threading.Thread(target=self.decode_loop, name="mt-serve-decode", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        """Stop taking requests, decode what is queued, then end the decoding loop (and wait for it)."""
        with self.cond:
            for b in self.batchers.values():
                b.stopping = True
            self.cond.notify_all()
        if self.running or self.thread is not None:
            self.finished.wait()
        if self.thread is not None:
            self.thread.join()

    def decode_loop(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Decode the queued batches, the one due first first, until `stop` (and the queues are
        empty) or, when nothing is queued, keep_going() is False (mt serve: its HTTP thread ended)."""
        self.running = True
        try:
            while (taken := self._next_batch(keep_going)) is not None:
                batcher, jobs = taken
                batcher.run(jobs)
        finally:
            self.running = False
            self.finished.set()

    def _next_batch(self, keep_going: Callable[[], bool]) -> tuple[Batcher, list[Job]] | None:
        with self.cond:
            while True:
                queued = [b for b in self.batchers.values() if b.pending]
                if not queued:
                    if any(b.stopping for b in self.batchers.values()) or not keep_going():
                        return None
                    self.cond.wait(self.POLL)
                    continue
                due = {b: b.due() for b in queued}  # each sums its queue's costs: once per look
                batcher = min(queued, key=lambda b: (due[b], b.pending[0].arrived))
                left = due[batcher] - time.monotonic()
                if left <= 0:
                    return batcher, batcher.take()
                self.cond.wait(min(left, self.POLL))  # a new job may fill a budget or be due sooner

    def alive(self) -> bool:
        return self.running

    def info(self) -> dict[str, Any]:
        return {
            "mt_version": __version__,
            "default_model": self.default,
            "models": [self._model_info(m) for m in self.models.values()],
            "limits": asdict(self.limits),
        }

    @staticmethod
    def _model_info(m: ServedModel) -> dict[str, Any]:
        cfg = m.run.config
        return {
            "name": m.name,
            "run": m.path,
            "source_language": cfg.data.src_lang,
            "target_language": cfg.data.tgt_lang,
            "architecture": asdict(cfg.model),
            "parameters": sum(p.numel() for p in m.run.model.parameters()),
            "vocabulary": {"joint": cfg.vocab.joint, "type": cfg.vocab.model_type,
                           "source_size": len(m.run.src_vocab), "target_size": len(m.run.tgt_vocab)},
            "decoding": asdict(cfg.decode),
            "device": str(m.device),
            "precision": m.precision,
        }

    def parse(self, body: bytes) -> tuple[ServedModel, list[str], DecodeConfig, bool, list[str] | None, Look | None,
                                          list[dict[str, list[str]]] | None]:
        """A request body -> (model, texts, decoding options, alignments, target prefixes or None, what to
        look inside or None, each text's constraints and avoid list or None), or a ServeError saying
        what is wrong."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ServeError(400, "invalid_utf8", f"the body is not valid UTF-8 (byte {e.start})") from None
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise ServeError(400, "invalid_json", f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        except NonStandardNumber as e:
            raise ServeError(400, "invalid_json", f"the body is not valid JSON: {e} is not a JSON number") from None
        if not isinstance(data, dict):
            raise ServeError(422, "invalid_request", f"the body must be a JSON object, not {type(data).__name__}")
        try:
            req = TranslateRequest.model_validate(data)
        except ValidationError as e:
            raise ServeError(422, "invalid_request", validation_message(e)) from None
        if (req.text is None) == (req.texts is None):
            raise ServeError(422, "invalid_request", "give either \"text\" (a string) or \"texts\" (a list of strings)")
        if req.prefix is not None and req.text is None:
            raise ServeError(422, "invalid_request", "\"prefix\" goes with \"text\"; with \"texts\" give \"prefixes\" (a list)")
        if req.prefixes is not None and req.texts is None:
            raise ServeError(422, "invalid_request", "\"prefixes\" goes with \"texts\"; with \"text\" give \"prefix\" (a string)")
        texts = [req.text] if req.text is not None else list(req.texts or [])
        if len(texts) > self.limits.max_texts:
            raise ServeError(413, "too_many_texts", f"{len(texts)} texts in one request; the limit is {self.limits.max_texts}")
        prefixes = [req.prefix] if req.prefix is not None else req.prefixes
        if prefixes is not None and len(prefixes) != len(texts):
            raise ServeError(422, "invalid_request", f"{len(prefixes)} prefixes for {len(texts)} texts: give one per text (\"\" for none)")
        named = [("text" if req.text is not None else f"texts[{i}]", t) for i, t in enumerate(texts)]
        named += [("prefix" if req.prefix is not None else f"prefixes[{i}]", p) for i, p in enumerate(prefixes or [])]
        for where, t in named:
            if len(t) > self.limits.max_chars:
                raise ServeError(413, "text_too_long", f"{where} has {len(t)} characters; the limit is {self.limits.max_chars}")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ServeError(400, "invalid_unicode", f"{where} holds a lone surrogate (\\ud800-\\udfff escape): not valid Unicode") from None
        name = req.model or self.default
        if name not in self.models:
            raise ServeError(404, "unknown_model", f"no model named {name!r} (served: {', '.join(self.models)})")
        model = self.models[name]
        arch = model.run.config.model
        layers = arch.dec_layers if arch.arch == "transformer" else None  # an RNN has one attention: any layer
        decode = request_decode(model.run.config.decode, req, self.limits, layers)
        if prefixes is not None:
            self._check_prefixes(model, prefixes, req.prefix is not None)
            if not any(prefixes):
                prefixes = None
        look = Look(req.trace, req.attention) if req.trace or req.attention else None
        if look is not None:
            self._check_look(model, req, decode, prefixes)
        return model, texts, decode, req.alignments, prefixes, look, request_controls(req, len(texts), decode)

    def _check_look(self, model: ServedModel, req: RequestBase, decode: DecodeConfig, prefixes: list[str] | None) -> None:
        """trace and attention: one text; trace: beam search of at most TRACE_MAX_BEAM whose translation
        may have at most TRACE_MAX_OUTPUT pieces (a * source pieces + b, as the search bounds it)."""
        asked = " and ".join(f'"{name}"' for name in ("trace", "attention") if getattr(req, name))
        if req.text is None:
            raise ServeError(422, "invalid_request", f'{asked} look inside one translation: give "text", not "texts"')
        if req.attention and not model.run.model.has_attention:
            raise ServeError(422, "invalid_options", "attention: the model has no attention (an RNN with "
                                                     "model.attention: none)")
        if not req.trace:
            return
        if decode.search != "beam":
            raise ServeError(422, "invalid_options", f"trace records beam search, not {decode.search} search: give a "
                                                     "beam (beam 1 is greedy search)")
        if decode.beam > TRACE_MAX_BEAM:
            raise ServeError(422, "invalid_options", f"trace: beam {decode.beam} is above the limit of a traced "
                                                     f"search ({TRACE_MAX_BEAM})")
        search = build_search(decode, max_len_cap=self.limits.max_output_tokens)
        src_len = len(model.run.src_vocab.encode(req.text))
        longest = int(search.max_lengths(model.run.model, torch.tensor([src_len]))[0])
        if prefixes:
            longest = max(longest, len(model.run.tgt_vocab.encode(prefixes[0])))
        if longest > TRACE_MAX_OUTPUT:
            raise ServeError(422, "invalid_options", f"trace: this text may translate to {longest} pieces "
                                                     f"(max_len_a {decode.max_len_a:g} x {src_len} source pieces + "
                                                     f"max_len_b {decode.max_len_b}); a trace holds at most "
                                                     f"{TRACE_MAX_OUTPUT}: shorten the text or lower max_len_a/max_len_b")

    def _check_prefixes(self, model: ServedModel, prefixes: list[str], single: bool) -> None:
        """A prefix longer than a translation may be (the server's limit, the model's positions) is a
        422 here, not an error that would fail the whole batch it joins."""
        limit = self.limits.max_output_tokens
        if model.run.model.max_tgt_positions is not None:
            limit = min(limit, model.run.model.max_tgt_positions - 1)
        for i, ids in enumerate(model.run.tgt_vocab.encode_batch(prefixes)):
            if len(ids) > limit:
                where = "prefix" if single else f"prefixes[{i}]"
                raise ServeError(422, "prefix_too_long", f"{where} has {len(ids)} target tokens; a translation "
                                                         f"may have at most {limit}")

    async def translate(self, model: ServedModel, texts: list[str], decode: DecodeConfig, arrived: float,
                        alignments: bool = False, prefixes: list[str] | None = None,
                        look: Look | None = None, controls: list[dict[str, list[str]]] | None = None) -> list[Any]:
        """The texts' Translations; with look, the one text's (Translation, what it asked to see)."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        rows = max(build_search(decode).rows_per_sentence, 1)
        ids = model.run.src_vocab.encode_batch(texts)
        cost = sum(len(i) + 1 for i in ids) * rows
        key = object() if decode.search == "sampling" or look is not None else (decode, alignments)
        job = Job(texts, decode, cost, loop.create_future(), loop, alignments, prefixes, look, key, ids,
                  controls=controls)
        batcher = self.batchers[model.name]
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise ServeError(503, "queue_full", f"the queue of model {model.name!r} is full "
                             f"({self.limits.queue_size} texts); retry after {e.retry_after} s",
                             {"Retry-After": str(e.retry_after)}) from None
        left = self.limits.timeout - (time.monotonic() - arrived)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(left, 0.0))
        except asyncio.TimeoutError:
            batcher.cancel(job)
            raise ServeError(504, "timeout", f"no answer within the server's timeout ({self.limits.timeout:g} s)") from None


def request_controls(req: RequestBase, n_texts: int, decode: DecodeConfig) -> list[dict[str, list[str]]] | None:
    """Each text's "constraints" and "avoid" phrases (None: the request has none), or a 422 naming
    what is wrong: with "text" a list of strings, with "texts" one list per text."""
    per_text: dict[str, list[list[str]]] = {}
    for key in ("constraints", "avoid"):
        value = getattr(req, key)
        if value is None:
            continue
        single = req.text is not None
        if any(isinstance(p, str) != single for p in value):
            raise ServeError(422, "invalid_request", f'"{key}" is a list of strings with "text", one list of '
                                                     f'strings per text with "texts"')
        lists = [value] if single else value
        if len(lists) != n_texts:
            raise ServeError(422, "invalid_request", f'{len(lists)} "{key}" lists for {n_texts} texts: give one per '
                                                     f"text ([] for none)")
        per_text[key] = lists
    if not any(any(lists) for lists in per_text.values()):
        return None
    if any(per_text.get("constraints", [])) and decode.search != "beam":
        raise ServeError(422, "invalid_options", f"constraints need beam search, not {decode.search} search: give a beam")
    return [{key: lists[i] for key, lists in per_text.items()} for i in range(n_texts)]


def phrase_lists(controls: list[dict[str, list[str]]] | None) -> dict[str, list[list[str]]]:
    """Translator.translate's constraints= and avoid= from each text's controls ({} for none)."""
    if not controls:
        return {}
    return {key: [c.get(key, []) for c in controls] for key in ("constraints", "avoid")}


class NonStandardNumber(Exception):
    """NaN, Infinity or -Infinity in a body: Python's json accepts them, JSON does not."""


def _refuse_constant(name: str) -> Any:
    raise NonStandardNumber(name)


def validation_message(e: ValidationError) -> str:
    """pydantic's errors as one line: 'texts[2]: Input should be a valid string; unknown option ...'."""
    parts = []
    for err in e.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(err["loc"]))
        if err["type"] == "extra_forbidden":
            known = ", ".join(TranslateRequest.model_fields)
            parts.append(f"unknown option {loc!r} (known: {known})")
        else:
            parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


def format_translation(tr: Translation, n_best: int, alignments: bool = False,
                       extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """One answer, in the shape of `mt translate --json` (without the line id), with the words the
    copy step placed (tr.copies) where there are any; extras: what the request asked to see inside
    (trace, attention)."""
    nbest = tr.nbest or [("", 0.0)]
    out: dict[str, Any] = {"translation": tr.text, "score": nbest[0][1], "tokens": tr.tokens,
                           "token_scores": tr.token_scores, **(extras or {})}
    if tr.copies:
        out["copies"] = tr.copies
    if alignments:
        out["alignment"] = [list(link) for link in tr.alignment or []]
    if n_best > 1:
        out["nbest"] = [{"translation": t, "score": s} for t, s in nbest]
    if tr.pieces > 1:
        out["pieces"] = tr.pieces
    return out


def format_answers(results: list[Any], decode: DecodeConfig, alignments: bool, look: Look | None) -> list[dict[str, Any]]:
    """The translations of a request (service.translate's results: Translations, or with look the
    one text's (Translation, extras)), each with the words its copy of unseen words placed."""
    pairs = results if look is not None else [(r, None) for r in results]
    return [format_translation(r, decode.n_best, alignments, extras) for r, extras in pairs]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it passes `limit` bytes (announced or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, "body_too_large", f"the body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, "body_too_large", f"the body has more than {limit} bytes, the limit")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the app ---------------------------------------------------------------------------------------
TRANSLATE_ERRORS = {
    400: _error_doc("Invalid JSON or UTF-8", "the body is not valid JSON: Expecting value (line 1, column 1)"),
    404: _error_doc("Unknown model", "no model named 'x' (served: m30k)"),
    413: _error_doc("Too large", "65 texts in one request; the limit is 64"),
    422: _error_doc("Wrong types or options", "unknown option 'beam_size' (known: text, texts, ...)"),
    503: _error_doc("Queue full (see Retry-After)", "the queue of model 'm30k' is full (1024 texts); retry after 2 s"),
    504: _error_doc("Timeout", "no answer within the server's timeout (60 s)"),
}


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON `{"error": {"status", "type", "message"}}`: mt's own, FastAPI's (404, 405,
    422) and any other exception (500, logged)."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError) -> JSONResponse:
        return error_response(e.status, e.kind, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, kind, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return error_response(500, "internal_error", f"{type(e).__name__}: {e}")


def create_app(service: TranslationService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and let the requests in flight finish
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(
        title="mt translation server",
        version=__version__,
        description="Neural machine translation with dynamic batching (`mt serve`). "
                    "Errors are JSON: `{\"error\": {\"status\", \"type\", \"message\"}}`.",
        lifespan=lifespan,
    )

    add_error_handlers(app)
    add_page(app)

    @app.post(
        "/translate",
        response_model=TranslateResponse,
        response_model_exclude_none=True,
        summary="Translate texts",
        description="Translations in request order, one per text (an empty text gets an empty translation). "
                    "Texts of concurrent requests with the same options are decoded together.",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": TranslateRequest.model_json_schema(), "examples": REQUEST_EXAMPLES}}}},
        responses=TRANSLATE_ERRORS,
    )
    async def translate(request: Request) -> dict[str, Any]:
        arrived = time.monotonic()
        body = await read_body(request, service.limits.max_body)
        model, texts, decode, alignments, prefixes, look, controls = service.parse(body)
        results = await service.translate(model, texts, decode, arrived, alignments, prefixes, look, controls)
        return {"model": model.name, "translations": format_answers(results, decode, alignments, look)}

    @app.get("/health", summary="Readiness and queue figures", responses={200: {"content": {"application/json": {
        "example": {"status": "ok", "models": {"m30k": {"queued_texts": 0, "batches": 12, "requests": 80,
                                                        "texts": 160, "decoding_seconds": 3.2,
                                                        "worker": "running"}}}}}},
        503: {"description": "The decoding loop has stopped"}})
    async def health() -> JSONResponse:
        """200 once the models are loaded and the decoding loop runs (503 when it has stopped);
        per model: texts waiting, and the batches, requests and texts decoded so far (requests / batches > 1:
        requests were batched together) and the seconds spent decoding them (near the wall time: the model
        is the bottleneck)."""
        ok = service.alive()
        models = {name: {"queued_texts": b.pending_texts, "batches": b.batches, "requests": b.requests,
                         "texts": b.texts, "decoding_seconds": round(b.busy, 3), "worker": "running" if ok else "stopped"}
                  for name, b in service.batchers.items()}
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": models}, 200 if ok else 503)

    @app.get("/info", summary="Served models, decoding defaults, limits, version")
    async def info() -> dict[str, Any]:
        return service.info()

    return app
