"""Translator: lines -> subword ids -> length-sorted token batches -> Search -> text, in input order."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from mt import MTError
from mt.checkpoint import load_weights, read_json
from mt.config import Config, load_config
from mt.data import source_tensor, token_batches
from mt.models import build_model
from mt.models.base import Seq2Seq
from mt.rundir import CONFIG, META, check_run_dir, vocab_files, weights_file
from mt.search import Hypothesis, Search
from mt.vocab import Vocab

#: longest input (subword tokens) translated in one piece by models without a position limit
DEFAULT_MAX_INPUT_TOKENS = 1024


@dataclass
class Translation:
    text: str  # best hypothesis, detokenised
    nbest: list[tuple[str, float]] = field(default_factory=list)  # (text, score), best first
    src_pieces: list[str] = field(default_factory=list)
    tgt_pieces: list[str] = field(default_factory=list)
    attention: torch.Tensor | None = None  # [target pieces + eos, source pieces + eos]
    pieces: int = 1  # > 1 when a too-long line was cut into pieces


@dataclass
class Run:
    """A trained model with its vocabularies, loaded from a run directory."""

    config: Config
    model: Seq2Seq
    src_vocab: Vocab
    tgt_vocab: Vocab


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", checkpoint: str = "best") -> Run:
    """Load RUN/config.yaml, its SentencePiece models and weights (best, last, or a .safetensors path)."""
    run_dir = check_run_dir(run_dir)
    cfg = load_config(run_dir / CONFIG)
    src_file, tgt_file = vocab_files(run_dir, cfg.vocab.joint)
    src_vocab = Vocab(src_file)
    tgt_vocab = src_vocab if tgt_file == src_file else Vocab(tgt_file)
    meta_path = run_dir / META
    if meta_path.is_file():
        meta = read_json(meta_path)
        sizes = (meta.get("src_vocab_size"), meta.get("tgt_vocab_size"))
        have = (len(src_vocab), len(tgt_vocab))
        if None not in sizes and sizes != have:
            raise MTError(
                f"{run_dir}: vocabulary mismatch: the SentencePiece model{'s have' if src_file != tgt_file else ' has'} "
                f"{have[0]}/{have[1]} pieces (source/target) but the model was trained with {sizes[0]}/{sizes[1]}"
            )
    model = build_model(cfg.model, len(src_vocab), len(tgt_vocab))
    load_weights(model, weights_file(run_dir, checkpoint))
    model.to(device).eval()
    return Run(cfg, model, src_vocab, tgt_vocab)


class Translator:
    def __init__(
        self,
        model: Seq2Seq,
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        search: Search,
        device: torch.device | str = "cpu",
        batch_tokens: int = 4096,
        max_input_tokens: int | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.src_vocab, self.tgt_vocab, self.search = model, src_vocab, tgt_vocab, search
        self.device = torch.device(device)
        self.batch_tokens = batch_tokens
        limit = max_input_tokens or DEFAULT_MAX_INPUT_TOKENS
        if model.max_src_positions is not None:
            limit = min(limit, model.max_src_positions - 1)  # one position for eos
        self.max_input_tokens = limit
        self.warn = warn or (lambda msg: print(f"mt: warning: {msg}", file=sys.stderr))

    # -- ids ----------------------------------------------------------------------------------
    def search_ids(self, src_ids: Sequence[Sequence[int]]) -> list[list[Hypothesis]]:
        """Run the search over token-id sequences (each at most max_input_tokens long); results in
        input order. Sentences are sorted by length and grouped into batches of at most
        batch_tokens padded source tokens x decoder rows per sentence (beam size)."""
        order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]), reverse=True)
        lengths = [len(s) + 1 for s in src_ids]
        results: list[list[Hypothesis]] = [[] for _ in src_ids]
        budget = max(self.batch_tokens // max(self.search.rows_per_sentence, 1), 1)
        for batch in token_batches(lengths, budget, order):
            src, src_lengths = source_tensor([src_ids[i] for i in batch])
            hyps = self.search(self.model, src.to(self.device), src_lengths.to(self.device))
            for i, h in zip(batch, hyps):
                results[i] = h
        return results

    # -- text ---------------------------------------------------------------------------------
    def translate(self, lines: Sequence[str], first_line: int = 1) -> list[Translation]:
        """Translate a list of lines. Empty lines give empty translations; a line longer than
        max_input_tokens is cut into pieces that are translated one after the other."""
        encoded = self.src_vocab.encode_batch(lines)
        items: list[list[int]] = []  # pieces to translate
        owner: list[int] = []  # line index of each piece
        for i, ids in enumerate(encoded):
            if not ids:
                continue
            pieces = self._split(ids)
            if len(pieces) > 1:
                only_one = "; its n-best list has one entry" if self.search.n_best > 1 else ""
                self.warn(
                    f"line {first_line + i}: {len(ids)} subword tokens, more than the model's "
                    f"{self.max_input_tokens}; translated in {len(pieces)} pieces{only_one}"
                )
            items.extend(pieces)
            owner.extend([i] * len(pieces))
        hyps = self.search_ids(items)
        grouped: list[list[list[Hypothesis]]] = [[] for _ in lines]
        for i, h in zip(owner, hyps):
            grouped[i].append(h)
        return [self._result(encoded[i], parts) for i, parts in enumerate(grouped)]

    def _split(self, ids: list[int]) -> list[list[int]]:
        """A line's ids in pieces of at most max_input_tokens, each cut before a word (a piece
        that starts with SentencePiece's '▁') where the piece holds one, so no word is split."""
        step = self.max_input_tokens
        if len(ids) <= step:
            return [ids]
        word_start = [p.startswith("\u2581") for p in self.src_vocab.pieces(ids)]
        pieces, pos = [], 0
        while len(ids) - pos > step:
            cut = next((j for j in range(pos + step, pos, -1) if word_start[j]), pos + step)
            pieces.append(ids[pos:cut])
            pos = cut
        pieces.append(ids[pos:])
        return pieces

    def _result(self, src_ids: list[int], parts: list[list[Hypothesis]]) -> Translation:
        if not parts:
            return Translation(text="", nbest=[("", 0.0)])
        if len(parts) > 1:
            # one detokenisation of all pieces' tokens: the spaces between them are the vocabulary's
            # (none for a language written without spaces), not a join's
            text = self.tgt_vocab.decode([t for p in parts if p for t in p[0].tokens])
            score = sum(p[0].score for p in parts if p)
            return Translation(text=text, nbest=[(text, score)], pieces=len(parts))
        nbest = [(self.tgt_vocab.decode(h.tokens), h.score) for h in parts[0]]
        best = parts[0][0] if parts[0] else None
        return Translation(
            text=nbest[0][0] if nbest else "",
            nbest=nbest,
            src_pieces=self.src_vocab.pieces(src_ids) + ["</s>"],
            tgt_pieces=(self.tgt_vocab.pieces(best.tokens) + ["</s>"]) if best else [],
            attention=best.attention if best else None,
        )

    def stream(self, lines: Iterable[str], buffer_lines: int = 1000) -> Iterator[Translation]:
        """Translate an iterable of lines chunk by chunk, yielding results in order: memory stays
        bounded by `buffer_lines` whatever the input size."""
        chunk: list[str] = []
        first = 1
        for line in lines:
            chunk.append(line)
            if len(chunk) >= buffer_lines:
                yield from self.translate(chunk, first)
                first += len(chunk)
                chunk = []
        if chunk:
            yield from self.translate(chunk, first)
