"""Prepare a recipe's training corpora once: a SentencePiece model trained on a reservoir sample read
in one streaming pass, then every pair cleaned and encoded by worker processes, chunk by chunk, into
memory-mapped token files (mt/data/dataset.py), with a manifest of what was read, kept and dropped.

Cleaning rules, in the order they are tried (a dropped pair counts under its first rule):

    invalid_utf8     a side is not valid UTF-8 (an error naming file and line, unless data.skip_invalid)
    line_too_long    a side is over the reader's byte limit (mt.data.text.MAX_LINE_BYTES; same policy)
    empty            a side is empty or white space, or encodes to no tokens
    identical        source == target (data.drop_identical)
    too_long         a side has more than data.max_len tokens
    ratio            the longer side has more than data.max_ratio x the tokens of the shorter
    duplicate        the same (source, target) bytes earlier in the same corpus (data.dedup; 64-bit
                     blake2b of the pair)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import deque
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from mt import MTError, __version__
from mt.config import Config, DataConfig, TrainCorpus, VocabConfig, to_dict
from mt.data.placeholders import Protector, mask_pair
from mt.data.dataset import FORMAT_VERSION, MANIFEST, PreparedData, TokenWriter, read_manifest, sha256_file, token_dtype
from mt.data.text import MAX_LINE_BYTES, decode_line, load_corpus, open_binary, resolve_path

REASONS = ("invalid_utf8", "line_too_long", "empty", "identical", "too_long", "ratio", "duplicate")
_KEEP, _INVALID, _LONG_LINE, _EMPTY, _IDENTICAL, _TOO_LONG, _RATIO, _DUPLICATE = range(8)

#: pairs per chunk handed to a worker
CHUNK_PAIRS = 20_000
#: corpora smaller than this (bytes of input) are encoded in this process: starting workers costs more
POOL_MIN_BYTES = 16 << 20
#: subword regularization draws each pair's segmentations from this many best (Kudo 2018: 64)
SAMPLING_NBEST = 64


# ----------------------------------------------------------------------------------------------
# the training corpora of a recipe


@dataclass
class Source:
    """One training corpus to read: a pair of files, or pairs made in memory (generated / split)."""

    label: str
    weight: float
    paths: tuple[Path, Path] | None = None
    pairs: tuple[list[str], list[str]] | None = None

    def describe(self) -> list[dict[str, Any]]:
        """The manifest's record of this input: each file's path, size, mtime and sha256."""
        if self.paths is None:
            return [{"corpus": self.label, "generated": True}]
        out = []
        for side, path in zip(("src", "tgt"), self.paths):
            st = path.stat()
            out.append({"corpus": self.label, "side": side, "path": str(path.resolve()), "bytes": st.st_size,
                        "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)})
        return out

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.paths) if self.paths else 0


def train_sources(cfg: DataConfig, seed: int) -> list[Source]:
    entries = cfg.train or (
        (TrainCorpus(corpus="files", src=cfg.train_src, tgt=cfg.train_tgt),) if cfg.corpus == "files"
        else (TrainCorpus(corpus=cfg.corpus),)
    )
    sources = []
    for e in entries:
        if e.corpus == "files":
            paths = (resolve_path(cfg, e.src), resolve_path(cfg, e.tgt))
            for p in paths:
                if not p.is_file():
                    raise MTError(f"{p}: no such file" if not p.exists() else f"{p}: is a directory, not a text file")
            sources.append(Source(e.label, e.weight, paths=paths))
        elif e.corpus == "multi30k":
            from mt.data import download

            dest = Path(cfg.data_dir)
            download.fetch("multi30k", dest, Path(cfg.mirror) if cfg.mirror else None, langs=[cfg.src_lang, cfg.tgt_lang])
            sources.append(Source(e.label, e.weight, paths=download.multi30k_split_paths(dest, cfg.src_lang, cfg.tgt_lang)["train"]))
        else:  # synthetic, tatoeba: made in memory (small)
            sources.append(Source(e.label, e.weight, pairs=load_corpus(replace(cfg, corpus=e.corpus), seed)["train"]))
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise MTError(f"data.train: two corpora are both called {max(labels, key=labels.count)!r}; give them names")
    return sources


# ----------------------------------------------------------------------------------------------
# reading in chunks


@dataclass
class Chunk:
    corpus: int
    names: tuple[str, str]
    first_line: int  # line number of the chunk's first pair
    src: list[bytes | None]  # raw lines; None: a line over the byte limit (skipped)
    tgt: list[bytes | None]


def _read_line(f: IO[bytes]) -> bytes | None:
    """The next line (b"" at the end); None for a line over the byte limit, read past, never held whole."""
    raw = f.readline(MAX_LINE_BYTES + 1)
    if len(raw) <= MAX_LINE_BYTES:
        return raw
    while raw and not raw.endswith(b"\n"):
        raw = f.readline(MAX_LINE_BYTES + 1)
    return None


def read_chunks(source: Source, corpus: int, size: int | None = None) -> Iterator[Chunk]:
    size = size or CHUNK_PAIRS
    if source.pairs is not None:
        src, tgt = source.pairs
        if not src:
            raise MTError(f"{source.label}: empty corpus (no pairs)")
        for i in range(0, len(src), size):
            yield Chunk(corpus, (source.label + ":src", source.label + ":tgt"), i + 1,
                        [s.encode() for s in src[i : i + size]], [t.encode() for t in tgt[i : i + size]])
        return
    names = tuple(str(p) for p in source.paths)
    import gzip
    import zlib

    try:
        with open_binary(source.paths[0]) as fs, open_binary(source.paths[1]) as ft:
            lineno = 0
            while True:
                src, tgt, first = [], [], lineno + 1
                for _ in range(size):
                    a, b = _read_line(fs), _read_line(ft)
                    if a == b"" or b == b"":
                        if a != b:  # one side ended first: count the other's lines for the message
                            rest = 1 + sum(1 for _ in iter(lambda: _read_line(fs if b == b"" else ft), b""))
                            n_src, n_tgt = (lineno + rest, lineno) if b == b"" else (lineno, lineno + rest)
                            raise MTError(f"{names[0]} has {n_src} lines but {names[1]} has {n_tgt}: a parallel "
                                          "corpus needs one line each")
                        break
                    lineno += 1
                    src.append(a)
                    tgt.append(b)
                if src:
                    yield Chunk(corpus, names, first, src, tgt)
                elif lineno == 0:
                    raise MTError(f"{names[0]}: empty corpus (no lines)")
                if len(src) < size:
                    return
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise MTError(f"{names[0]} / {names[1]}: cannot read ({e})") from None


# ----------------------------------------------------------------------------------------------
# vocabulary: a reservoir sample from one streaming pass


class Reservoir:
    """A uniform sample of at most k items (lines) of a stream (Algorithm R; the draws made per chunk with
    numpy, so that only replacements cost Python time)."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seen, self.items = k, 0, []
        self.rng = np.random.default_rng([seed, 7])

    def add(self, items: list) -> None:
        n, k = len(items), self.k
        take = max(0, min(n, k - len(self.items)))
        self.items.extend(items[:take])
        if take < n:
            positions = np.arange(self.seen + take, self.seen + n, dtype=np.float64)
            slots = (self.rng.random(n - take) * (positions + 1)).astype(np.int64)
            for i in np.flatnonzero(slots < k):
                self.items[slots[i]] = items[take + i]
        self.seen += n


def sample_for_vocab(sources: list[Source], joint: bool, k: int, seed: int, skip_invalid: bool) -> list[list[str]]:
    """Non-empty lines for SentencePiece: one sample (joint) or one per side, at most k lines each.
    Invalid lines are an error here already (file and line), unless skip_invalid."""
    reservoirs = [Reservoir(k, seed)] if joint else [Reservoir(k, seed), Reservoir(k, seed + 1)]
    for c, source in enumerate(sources):
        for chunk in read_chunks(source, c):
            bad = np.zeros(len(chunk.src), dtype=np.uint8)
            sides = [decode_chunk(lines, name, chunk.first_line, bad, skip_invalid)
                     for lines, name in zip((chunk.src, chunk.tgt), chunk.names)]
            for r, lines in zip(reservoirs * 2 if joint else reservoirs, sides):
                r.add([line for i, line in enumerate(lines) if not bad[i] and line.strip()])
    return [r.items for r in reservoirs]


def build_vocab(cfg: Config, sources: list[Source], out: Path, log: Callable[[str], None]) -> tuple[Path, ...]:
    from mt.rundir import vocab_files
    from mt.data.vocab import train_vocab

    v = cfg.vocab
    started = time.monotonic()
    samples = sample_for_vocab(sources, v.joint, v.max_sentences, cfg.train.seed, cfg.data.skip_invalid)
    sampled = time.monotonic()
    files = vocab_files(out, v.joint)
    log(f"training SentencePiece ({v.model_type}, {v.size} pieces, {'joint' if v.joint else 'separate'}) on "
        f"{' + '.join(str(len(s)) for s in samples)} sampled lines")
    for lines, path in zip(samples, files[:1] if v.joint else files):
        train_vocab(lines, path, v, cfg.train.seed)
    log(f"vocabulary: sample {sampled - started:.1f} s, SentencePiece training {time.monotonic() - sampled:.1f} s")
    return files[:1] if v.joint else files


# ----------------------------------------------------------------------------------------------
# encoding and cleaning (in worker processes)


@dataclass
class Rules:
    max_len: int
    max_ratio: float
    drop_identical: bool
    skip_invalid: bool
    dedup: bool
    placeholders: int = 0  # vocab.placeholders
    placeholder_prob: float = 0.0  # data.placeholder_prob
    seed: int = 0
    sampling_alpha: float = 0.0  # vocab.sampling_alpha: 0, one segmentation per pair
    segmentations: int = 1  # with sampling: sampled segmentations per pair (rows of a pair)


@dataclass
class Encoded:
    corpus: int
    reasons: np.ndarray  # [n] uint8, one per pair read: _KEEP or the rule that dropped it
    src: np.ndarray  # flat ids of the pairs kept so far (all but duplicates decided)
    src_lengths: np.ndarray
    tgt: np.ndarray
    tgt_lengths: np.ndarray
    hashes: np.ndarray  # [kept] uint64 of the pairs' bytes


def decode_chunk(lines: list[bytes | None], name: str, first_line: int, reasons: np.ndarray, skip_invalid: bool) -> list[str]:
    """The chunk's lines as text without line ends: the whole chunk decoded at once, line by line
    only when that fails; bad lines are an error (file:line) or marked in `reasons`."""
    if None not in lines:
        try:
            text = b"".join(lines).decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            out = text.split("\n")
            if text.endswith("\n"):
                out.pop()
            if len(out) == len(lines):
                if "\r" in text:
                    out = [line[:-1] if line.endswith("\r") else line for line in out]
                if first_line == 1 and out and out[0].startswith("\ufeff"):
                    out[0] = out[0][1:]
                return out
    out = []
    for i, raw in enumerate(lines):
        if raw is None:
            if not skip_invalid:
                raise MTError(f"{name}:{first_line + i}: line longer than {MAX_LINE_BYTES} bytes "
                              "(data.skip_invalid: true skips such pairs)")
            reasons[i] = reasons[i] or _LONG_LINE
            out.append("")
            continue
        try:
            out.append(decode_line(raw, name, first_line + i))
        except MTError as e:
            if not skip_invalid:
                raise MTError(f"{e} (data.skip_invalid: true skips such pairs)") from None
            reasons[i] = reasons[i] or _INVALID
            out.append("")
    return out


class Encoder:
    """Cleans and encodes chunks; lives in each worker process (see _worker_init)."""

    def __init__(self, vocab_paths: tuple[str, ...], rules: Rules, threads: int = 1) -> None:
        from mt.data.vocab import Vocab

        self.vocabs = [Vocab(p) for p in vocab_paths]
        if len(self.vocabs) == 1:
            self.vocabs.append(self.vocabs[0])
        self.sp = [v.sp for v in self.vocabs]
        self.dtype = token_dtype(max(sp.GetPieceSize() for sp in self.sp))
        self.rules, self.threads = rules, threads
        self.protector = Protector(kinds=("url", "email", "number"))  # and names (mask_pair)
        self._log_p: dict[int, np.ndarray] = {}

    def __call__(self, chunk: Chunk) -> Encoded:
        r = self.rules
        reasons = np.zeros(len(chunk.src), dtype=np.uint8)
        src_lines = decode_chunk(chunk.src, chunk.names[0], chunk.first_line, reasons, r.skip_invalid)
        tgt_lines = decode_chunk(chunk.tgt, chunk.names[1], chunk.first_line, reasons, r.skip_invalid)
        keep, src_text, tgt_text = [], [], []
        for i, (s, t) in enumerate(zip(src_lines, tgt_lines)):
            if reasons[i]:
                continue
            if not s.strip() or not t.strip():
                reasons[i] = _EMPTY
            elif r.drop_identical and s == t:
                reasons[i] = _IDENTICAL
            else:
                keep.append(i)
                src_text.append(s)
                tgt_text.append(t)
        if r.placeholders and r.placeholder_prob:
            src_text, tgt_text = self._placeholders(chunk, src_text, tgt_text)
        src_ids = self.vocabs[0].encode_batch(src_text, threads=self.threads)
        tgt_ids = self.vocabs[1].encode_batch(tgt_text, threads=self.threads)
        ls = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
        lt = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
        why = np.zeros(len(keep), dtype=np.uint8)
        shorter, longer = np.minimum(ls, lt), np.maximum(ls, lt)
        if r.max_ratio:
            why[longer > r.max_ratio * shorter] = _RATIO
        why[longer > r.max_len] = _TOO_LONG
        why[shorter == 0] = _EMPTY
        reasons[np.asarray(keep, dtype=np.int64)] = why
        ok = np.flatnonzero(why == 0)
        if len(ok) < len(keep):
            src_ids, tgt_ids = [src_ids[j] for j in ok], [tgt_ids[j] for j in ok]
            kept = [keep[j] for j in ok]
        else:
            kept = keep
        hashes = np.zeros(0, dtype=np.uint64)
        if r.dedup:
            hashes = np.fromiter(
                (int.from_bytes(hashlib.blake2b(chunk.src[i].rstrip(b"\r\n") + b"\0" + chunk.tgt[i].rstrip(b"\r\n"),
                                                digest_size=8).digest(), "little") for i in kept),
                dtype=np.uint64, count=len(kept))
        ls, lt = ls[ok], lt[ok]
        if r.sampling_alpha:
            texts = ([src_text[j] for j in ok], [tgt_text[j] for j in ok])
            src_ids, ls, tgt_ids, lt = self._sampled(chunk, texts, (src_ids, tgt_ids))
        return Encoded(
            chunk.corpus, reasons,
            np.fromiter(chain.from_iterable(src_ids), dtype=self.dtype, count=int(ls.sum())), ls,
            np.fromiter(chain.from_iterable(tgt_ids), dtype=self.dtype, count=int(lt.sum())), lt,
            hashes,
        )


    def _sampled(self, chunk: Chunk, texts: tuple[list[str], list[str]], best: tuple[list, list]
                 ) -> tuple[list, np.ndarray, list, np.ndarray]:
        """Subword regularization (Kudo 2018, sampling from the l-best): `segmentations` segmentations
        of each kept pair drawn from its SAMPLING_NBEST best with probability P(x)^alpha normalised
        over them (P(x): the product of the unigram model's piece probabilities), the rows of a pair
        side by side (pair-major); a draw longer than data.max_len is replaced by the best. The draws
        come from a generator seeded by the chunk's place in its corpus, so a prepared corpus is the
        same for any number of workers (SentencePiece's own sampler is not reproducible across
        processes)."""
        r, k = self.rules, self.rules.segmentations
        out = []
        for side, (lines, fallback) in enumerate(zip(texts, best)):
            vocab, log_p = self.vocabs[side], self._piece_log_p(side)
            rng = np.random.default_rng([r.seed, chunk.corpus, chunk.first_line, side])
            ids = []
            for line, one in zip(lines, fallback):
                code, rest = vocab.split_code(line)  # a language code (>>fra<<) is one piece, never sampled
                nbest = [code + seg for seg in vocab.sp.NBestEncodeAsIds(rest, SAMPLING_NBEST)
                         if len(code) + len(seg) <= r.max_len] or [one]
                weight = r.sampling_alpha * np.array([log_p[seg].sum() for seg in nbest])
                weight = np.exp(weight - weight.max())
                ids += [nbest[c] for c in rng.choice(len(nbest), size=k, p=weight / weight.sum())]
            out += [ids, np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))]
        return out[0], out[1], out[2], out[3]

    def _piece_log_p(self, side: int) -> np.ndarray:
        """The unigram model's log probability of each piece of side `side` (cached)."""
        if side not in self._log_p:
            sp = self.sp[side]
            self._log_p[side] = np.array([sp.GetScore(i) for i in range(sp.GetPieceSize())], dtype=np.float64)
        return self._log_p[side]

    def _placeholders(self, chunk: Chunk, src: list[str], tgt: list[str]) -> tuple[list[str], list[str]]:
        """The spans each pair has on both sides replaced by placeholders (mt.data.placeholders), drawn
        from a generator seeded by the chunk's place in its corpus: the same pairs for any number of
        workers."""
        r = self.rules
        rng = random.Random(f"{r.seed}:{chunk.corpus}:{chunk.first_line}")
        pairs = [mask_pair(s, t, self.protector, r.placeholders, r.placeholder_prob, rng) for s, t in zip(src, tgt)]
        return [s for s, _ in pairs], [t for _, t in pairs]


_WORKER_ENCODER: Encoder | None = None  # one per worker process, made by its initializer


def _worker_init(vocab_paths: tuple[str, ...], rules: Rules) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = Encoder(vocab_paths, rules)


def _worker_encode(chunk: Chunk) -> Encoded:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER(chunk)


def _encoded_chunks(sources: list[Source], vocab_paths: tuple[str, ...], rules: Rules, workers: int) -> Iterator[Encoded]:
    """Every source's chunks, encoded, in order: by `workers` processes (at most 2 chunks each in
    flight, so memory stays bounded whatever the corpus size), or here for a small corpus."""
    chunks = (chunk for c, s in enumerate(sources) for chunk in read_chunks(s, c))
    if workers <= 1:
        encoder = Encoder(vocab_paths, rules, threads=min(4, os.cpu_count() or 1))
        yield from map(encoder, chunks)
        return
    import multiprocessing

    # spawn: the workers import numpy and sentencepiece only, never a copy of a torch process
    with multiprocessing.get_context("spawn").Pool(workers, _worker_init, (vocab_paths, rules)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_worker_encode, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
        pool.join()


class Deduplicator:
    """First occurrences of 64-bit pair hashes: a sorted numpy array, 8 bytes per kept pair."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=np.uint64)

    def first(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of the hashes seen for the first time (earlier chunks, and earlier in this one)."""
        mask = np.zeros(len(hashes), dtype=bool)
        _, first = np.unique(hashes, return_index=True)
        mask[first] = True
        if len(self.seen):
            pos = np.minimum(np.searchsorted(self.seen, hashes), len(self.seen) - 1)
            mask &= self.seen[pos] != hashes
        new = np.sort(hashes[mask])
        self.seen = np.insert(self.seen, np.searchsorted(self.seen, new), new)
        return mask


# ----------------------------------------------------------------------------------------------
# the whole step


def settings(cfg: Config) -> dict[str, Any]:
    """What a prepared directory depends on besides its inputs (checked when it is trained on)."""
    d = cfg.data
    return {"vocab": to_dict(cfg.vocab), "seed": cfg.train.seed,
            "data": {"max_len": d.max_len, "max_ratio": d.max_ratio, "dedup": d.dedup,
                     "drop_identical": d.drop_identical, "skip_invalid": d.skip_invalid,
                     "placeholder_prob": d.placeholder_prob}}


def prepare(cfg: Config, out: Path, log: Callable[[str], None] = print, vocab_from: tuple[Path, ...] | None = None,
            force: bool = False) -> dict[str, Any]:
    """Prepare the recipe's training corpora into `out` (built beside it, renamed when complete);
    `vocab_from`: SentencePiece model(s) to use instead of training one (fine-tuning)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MTError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MTError(f"{out} already holds files; choose another --out (or --force to replace a prepared corpus)")
    if force and out.is_dir() and any(out.iterdir()):
        read_manifest(out)  # --force replaces a prepared corpus, never an unrelated directory
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        manifest = _prepare_into(cfg, tmp, log, vocab_from)
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _vocabulary(cfg: Config, sources: list[Source], tmp: Path, log: Callable[[str], None],
                vocab_from: tuple[Path, ...] | None) -> tuple[Path, ...]:
    """The SentencePiece model(s) in `tmp`: copied from `vocab_from` (a resumed run's), or trained."""
    if not vocab_from:
        return build_vocab(cfg, sources, tmp, log)
    names = ("spm.model",) if len(vocab_from) == 1 else ("spm.src.model", "spm.tgt.model")
    vocab = tuple(tmp / n for n in names)
    for src, dst in zip(vocab_from, vocab):
        shutil.copyfile(src, dst)
    return vocab


def _write_tokens(sources: list[Source], vocab: tuple[Path, ...], rules: Rules, workers: int, writers: list[TokenWriter],
                  dedup_on: bool) -> tuple[list[dict[str, int]], list[int]]:
    """Encode and clean every corpus into the two TokenWriters (aborted on any error); per corpus,
    the counts of read, kept and dropped-by-rule pairs, and the pair index each corpus starts at."""
    counts = [{"read": 0, "kept": 0, **{r: 0 for r in REASONS}} for _ in sources]
    ranges, dedup, current = [], None, -1
    try:
        for enc in _encoded_chunks(sources, tuple(str(p) for p in vocab), rules, workers):
            if enc.corpus != current:
                ranges.append(writers[0].count // rules.segmentations)
                dedup, current = (Deduplicator() if dedup_on else None), enc.corpus
            c = counts[enc.corpus]
            c["read"] += len(enc.reasons)
            for code, n in zip(*np.unique(enc.reasons, return_counts=True)):
                if code:
                    c[REASONS[code - 1]] += int(n)
            src, ls, tgt, lt = enc.src, enc.src_lengths, enc.tgt, enc.tgt_lengths
            if dedup is not None:
                first = dedup.first(enc.hashes)
                c["duplicate"] += int((~first).sum())
                rows = np.repeat(first, rules.segmentations)  # a pair's rows (Encoder._sampled)
                src, tgt = src[np.repeat(rows, ls)], tgt[np.repeat(rows, lt)]
                ls, lt = ls[rows], lt[rows]
            c["kept"] += len(ls) // rules.segmentations
            writers[0].append(src, ls)
            writers[1].append(tgt, lt)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return counts, ranges


def _prepare_into(cfg: Config, tmp: Path, log: Callable[[str], None], vocab_from: tuple[Path, ...] | None) -> dict[str, Any]:
    started, cpu_started = time.monotonic(), _cpu_seconds()
    sources = train_sources(cfg.data, cfg.train.seed)
    vocab = _vocabulary(cfg, sources, tmp, log, vocab_from)
    vocab_done, cpu_vocab = time.monotonic(), _cpu_seconds()
    d = cfg.data
    v = cfg.vocab
    rules = Rules(d.max_len, d.max_ratio, d.drop_identical, d.skip_invalid, d.dedup, v.placeholders,
                  d.placeholder_prob, cfg.train.seed, v.sampling_alpha, v.sampling_segmentations if v.sampling_alpha else 1)
    workers = d.workers or os.cpu_count() or 1
    if sum(s.size() for s in sources) < POOL_MIN_BYTES:
        workers = 1
    from mt.data.vocab import Vocab

    dtype = token_dtype(max(len(Vocab(p)) for p in vocab))
    writers = [TokenWriter(tmp / "train.src", dtype), TokenWriter(tmp / "train.tgt", dtype)]
    counts, ranges = _write_tokens(sources, vocab, rules, workers, writers, d.dedup)
    files = {**writers[0].close(), **writers[1].close()}
    encode_done, cpu_encode = time.monotonic(), _cpu_seconds()
    pairs = writers[0].count // rules.segmentations
    ranges.append(pairs)
    if len(ranges) != len(sources) + 1:  # a corpus without a single line
        raise MTError("a training corpus is empty (no lines)")
    empty = [s.label for s, c in zip(sources, counts) if not c["kept"]]
    if empty:
        raise MTError(f"no training pairs left in {', '.join(empty)} after cleaning (see the rules in "
                      f"`mt prepare --help`): {counts[[s.label for s in sources].index(empty[0])]}")
    manifest = {
        "format": FORMAT_VERSION,
        "mt_version": __version__,
        "pairs": pairs,
        # rows of token files per pair: the sampled segmentations of subword regularization
        "segmentations": rules.segmentations,
        "dtype": np.dtype(dtype).name,
        "settings": settings(cfg),
        "inputs": [rec for s in sources for rec in s.describe()],
        "vocab": {p.name: sha256_file(p) for p in vocab},
        "corpora": [{"name": s.label, "weight": s.weight, "start": a, "end": b, "counts": c}
                    for s, a, b, c in zip(sources, ranges, ranges[1:], counts)],
        "counts": {k: sum(c[k] for c in counts) for k in counts[0]},
        "tokens": {"src": writers[0].total, "tgt": writers[1].total},
        "files": files,
        "seconds": {"vocab": round(vocab_done - started, 2), "encode": round(encode_done - vocab_done, 2)},
        # CPU time of this process and its finished workers: on a shared machine, what the work cost
        "cpu_seconds": {"vocab": round(cpu_vocab - cpu_started, 2), "encode": round(cpu_encode - cpu_vocab, 2)},
        "workers": workers,
    }
    total = manifest["counts"]
    dropped = ", ".join(f"{r} {total[r]}" for r in REASONS if total[r]) or "none"
    sampled = f", {rules.segmentations} sampled segmentations each" if rules.sampling_alpha else ""
    log(f"prepared {pairs} of {total['read']} pairs{sampled} ({pairs / max(encode_done - vocab_done, 1e-9):,.0f} pairs/s "
        f"with {workers} worker{'s' if workers > 1 else ''}); dropped: {dropped}; tokens {writers[0].total} / "
        f"{writers[1].total}")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")  # last: marks it complete
    return manifest


def _cpu_seconds() -> float:
    import resource

    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


# ----------------------------------------------------------------------------------------------
# checks when training on a prepared directory


def check_prepared(data: PreparedData, cfg: Config) -> None:
    """The prepared directory must fit the recipe's vocabulary settings, and its inputs, where they
    still exist, must be the files it was made from."""
    theirs = data.manifest["settings"]["vocab"]
    for key, ours in to_dict(cfg.vocab).items():
        if key == "max_sentences" or (key == "sampling_segmentations" and not cfg.vocab.sampling_alpha
                                      and not theirs.get("sampling_alpha")):
            continue  # no bearing on the tokens (segmentations: only where sampling is on)
        # a setting newer than the directory: it was made as the setting's default does
        if theirs.get(key, getattr(VocabConfig, key)) != ours:
            raise MTError(f"{data.root} was prepared with vocab.{key}={theirs.get(key)}, the recipe says {ours}; "
                          f"prepare it again with this recipe (mt prepare RECIPE --out {data.root} --force)")
    for rec in data.manifest["inputs"]:
        path = Path(rec["path"]) if "path" in rec else None
        if path is None or not path.is_file():
            continue  # generated, or not on this machine: the prepared directory stands on its own
        st = path.stat()
        if st.st_size != rec["bytes"] or (st.st_mtime_ns != rec["mtime_ns"] and sha256_file(path) != rec["sha256"]):
            raise MTError(f"{path} changed since it was prepared into {data.root}; prepare it again "
                          f"(mt prepare RECIPE --out {data.root} --force)")
