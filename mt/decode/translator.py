"""Translator: lines -> subword ids -> length-sorted token batches -> Search -> text, in input order."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from mt import MTError
from mt.decode.align import links_from, source_word_ids, word_attention, word_ids
from mt.checkpoint import load_weights, read_json
from mt.config import Config, DecodeConfig, load_config
from mt.data.batching import source_tensor, token_batches
from mt.models import build_model
from mt.models.base import Seq2Seq
from mt.rundir import CONFIG, META, check_run_dir, vocab_files, weights_file
from mt.decode.scorer import Scorer
from mt.decode.constraints import constraint_marks, contains, segmentations
from mt.decode.search import Hypothesis, Search, build_search
from mt.decode.unseen import UnseenCopier, placeholder_protector
from mt.data.placeholders import PLACEHOLDER, Masked, insert, mask_like, placeholder, source_words
from mt.data.vocab import Vocab

#: longest input (subword tokens) translated in one piece by models without a position limit
DEFAULT_MAX_INPUT_TOKENS = 1024


@dataclass
class Translation:
    text: str  # best hypothesis, detokenised
    nbest: list[tuple[str, float]] = field(default_factory=list)  # (text, score), best first
    src_pieces: list[str] = field(default_factory=list)
    attention: torch.Tensor | None = None  # [target pieces + eos, source pieces + eos]
    pieces: int = 1  # > 1 when a too-long line was cut into pieces
    #: best hypothesis: target pieces, then "</s>" (the rows of `attention`); empty for an empty line
    tokens: list[str] = field(default_factory=list)
    token_scores: list[float] = field(default_factory=list)  # log-probability of each of `tokens`
    #: (source word, target word) pairs over whitespace-separated words; None unless asked for
    alignment: list[tuple[int, int]] | None = None
    #: per piece of `tokens`: whether it belongs to one of the line's constraint phrases (None: it had none)
    constraint_tokens: list[bool] | None = None
    #: the words of `text` (whitespace-separated, from 0) that the copy step put there: unseen source
    #: words, and placeholders' spans the model's output lacked
    copies: list[int] = field(default_factory=list)
    #: the ids of `tokens` and of `src_pieces` (without eos): what the model saw and wrote
    token_ids: list[int] = field(default_factory=list)
    src_ids: list[int] = field(default_factory=list)


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
        alignments: bool = False,
        copy_unseen: bool = False,
        copy_layer: int = 0,
        placeholders: bool = False,
        protect: Sequence[str] = (),
    ) -> None:
        """alignments=True: each Translation gets its word alignment (the search must return attention).
        copy_unseen=True: source words with characters the vocabulary lacks are copied into the
        translation (mt.decode.unseen; a model without attention cannot place them and is left alone),
        placed by the attention of decoder layer `copy_layer` (Transformers).
        placeholders=True (for vocabularies with placeholder pieces): URLs, e-mail addresses, numbers,
        words in characters the vocabulary lacks and the `protect` patterns' spans are replaced by
        placeholders before the search and put back after it (mt.data.placeholders); a placeholder
        the output lacks is placed by the attention, like a copied word, or appended."""
        self.model, self.src_vocab, self.tgt_vocab, self.search = model, src_vocab, tgt_vocab, search
        if alignments and not search.return_attention:
            raise ValueError("word alignments need a search built with return_attention=True")
        self.alignments = alignments
        self.protector = placeholder_protector(src_vocab, tgt_vocab, protect) if placeholders else None
        #: placeholders masked, and those the model's outputs lacked: placed by attention, or appended
        self.placeholder_counts: Counter[str] = Counter()
        self.copy_unseen = copy_unseen
        wanted = copy_unseen or self.protector is not None
        self.copier = UnseenCopier(src_vocab, tgt_vocab) if wanted and model.has_attention else None
        self.copy_layer = copy_layer
        if self.copier is not None:
            with model.attention_layer_set(copy_layer):  # a layer the model lacks: an MTError now, not mid-file
                pass
        self.device = torch.device(device)
        self.batch_tokens = batch_tokens
        limit = max_input_tokens or DEFAULT_MAX_INPUT_TOKENS
        if model.max_src_positions is not None:
            limit = min(limit, model.max_src_positions - 1)  # one position for eos
        self.max_input_tokens = limit
        self.warn = warn or (lambda msg: print(f"mt: warning: {msg}", file=sys.stderr))

    @classmethod
    def for_model(cls, model: Seq2Seq, src_vocab: Vocab, tgt_vocab: Vocab, decode: DecodeConfig,
                  device: torch.device | str = "cpu", *, return_attention: bool = False, alignments: bool = False,
                  max_len_cap: int | None = None, batch_tokens: int | None = None,
                  max_input_tokens: int | None = None, warn: Callable[[str], None] | None = None) -> "Translator":
        """A Translator of a model in memory that decodes as `decode` says: its search, batch budget,
        attention layer (decode.alignment_layer, set on the model) and copy of unseen words.
        return_attention: each Translation keeps its attention (plots); alignments: and its word
        alignment; max_len_cap: no translation longer (tokens); batch_tokens: another budget than
        decode.batch_tokens. mt.decode.loading loads runs for it."""
        model.set_attention_layer(decode.alignment_layer)
        search = build_search(decode, return_attention=return_attention or alignments, max_len_cap=max_len_cap)
        return cls(model, src_vocab, tgt_vocab, search, device, batch_tokens or decode.batch_tokens, max_input_tokens,
                   warn=warn, alignments=alignments, copy_unseen=decode.copy_unseen, copy_layer=decode.copy_layer,
                   placeholders=decode.placeholders, protect=decode.protect)

    # -- ids ----------------------------------------------------------------------------------
    def search_ids(self, src_ids: Sequence[Sequence[int]], prefixes: Sequence[Sequence[int]] | None = None,
                   constraints: Sequence[Sequence[Sequence[int]]] | None = None,
                   avoid: Sequence[Sequence[Sequence[int]]] | None = None) -> list[list[Hypothesis]]:
        """Run the search over token-id sequences (each at most max_input_tokens long), each output
        starting with its prefix (target ids, [] for none) when given; results in input order.
        Sentences are sorted by length and grouped into batches of at most batch_tokens padded
        source tokens x decoder rows per sentence (beam size). constraints, avoid: per sequence, the
        phrases (target ids) its output must contain, must not contain (mt.decode.search.Search)."""
        order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]), reverse=True)
        lengths = [len(s) + 1 for s in src_ids]
        results: list[list[Hypothesis]] = [[] for _ in src_ids]
        budget = max(self.batch_tokens // max(self.search.rows_per_sentence, 1), 1)
        for batch in token_batches(lengths, budget, order):
            src, src_lengths = source_tensor([src_ids[i] for i in batch])
            src, src_lengths = src.to(self.device), src_lengths.to(self.device)
            controls = {name: [given[i] for i in batch] for name, given in
                        (("constraints", constraints), ("avoid", avoid)) if given is not None}
            if prefixes is None and not controls:
                hyps = self.search(self.model, src, src_lengths)
            else:
                hyps = self.search(self.model, src, src_lengths, [prefixes[i] for i in batch] if prefixes else None,
                                   **controls)
            for i, h in zip(batch, hyps):
                results[i] = h
        return results

    # -- text ---------------------------------------------------------------------------------
    def translate(self, lines: Sequence[str], first_line: int = 1, prefixes: Sequence[str] | None = None,
                  encoded: Sequence[list[int]] | None = None, constraints: Sequence[Sequence[str]] | None = None,
                  avoid: Sequence[Sequence[str]] | None = None) -> list[Translation]:
        """Translate a list of lines. Empty lines give empty translations; a line longer than
        max_input_tokens is cut into pieces that are translated one after the other.

        prefixes: target text each translation must start with ("" for none), one per line; the
        search continues from it (see mt.decode.search.Search). A line cut into pieces has its prefix
        forced on the first piece. An empty line with a prefix is translated from an empty source:
        the prefix is forced and the search continues after it, like any line's.

        encoded: the lines' source segmentation (src_vocab.encode_batch) when the caller made it already.

        constraints, avoid: per line, phrases its translation must contain (beam search; each is
        reported with self.warn when the translation lacks it) and must not contain, segmented as in
        running text (mt.decode.constraints.segmentations). A line cut into pieces has its constraints
        on the first piece, its avoid list on every piece.

        With placeholders (see __init__), the spans to pass through are masked in the lines (and in the
        prefixes, where they stand there too) before the search and restored in the translations."""
        if self.protector is None:
            results = self._translate(lines, first_line, prefixes, encoded, constraints, avoid)
            if not self.tgt_vocab.placeholders:
                return results
            # a model trained with placeholders may write one unasked: with nothing masked, it stands for nothing
            return [self._restore(r, Masked(line, (), ())) for r, line in zip(results, lines)]
        masks = [self.protector.mask(line) for line in lines]
        masked = [m.text for m in masks]
        self.placeholder_counts["masked"] += sum(sum(m.counts) for m in masks)
        if encoded is not None:  # the caller's segmentation holds for the lines that masking left alone
            changed = [i for i, (a, b) in enumerate(zip(lines, masked)) if a != b]
            encoded = list(encoded)
            for i, ids in zip(changed, self.src_vocab.encode_batch([masked[i] for i in changed])):
                encoded[i] = ids
        if prefixes is not None:
            prefixes = [mask_like(p, m) for p, m in zip(prefixes, masks)]
        written = constraints  # the phrases as the user wrote them, for the warnings
        if constraints is not None:  # a phrase holding a line's span holds its placeholder
            constraints = [[mask_like(c, m) for c in cs] for cs, m in zip(constraints, masks)]
        if avoid is not None:
            avoid = [[mask_like(a, m) for a in phrases] for phrases, m in zip(avoid, masks)]
        results = self._translate(masked, first_line, prefixes, encoded, constraints, avoid, written)
        return [self._restore(r, m) for r, m in zip(results, masks)]

    def _translate(self, lines: Sequence[str], first_line: int = 1, prefixes: Sequence[str] | None = None,
                   encoded: Sequence[list[int]] | None = None, constraints: Sequence[Sequence[str]] | None = None,
                   avoid: Sequence[Sequence[str]] | None = None,
                   written: Sequence[Sequence[str]] | None = None) -> list[Translation]:
        encoded = list(encoded) if encoded is not None else self.src_vocab.encode_batch(lines)
        if len(encoded) != len(lines):
            raise ValueError(f"{len(encoded)} segmented lines for {len(lines)} lines")
        prefix_ids = self.tgt_vocab.encode_batch(list(prefixes)) if prefixes is not None else [[] for _ in lines]
        if len(prefix_ids) != len(lines):
            raise ValueError(f"{len(prefix_ids)} prefixes for {len(lines)} lines")
        items: list[list[int]] = []  # pieces to translate
        owner: list[int] = []  # line index of each piece
        item_prefixes: list[list[int]] = []
        cons, avoid_ids = self._segment_phrases(len(lines), constraints, avoid, written)
        item_cons: list[list[list[int]]] = []
        item_avoid: list[list[list[int]]] = []
        for i, ids in enumerate(encoded):
            if not ids and not prefix_ids[i] and not cons[i]:
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
            item_prefixes.extend([prefix_ids[i]] + [[] for _ in pieces[1:]])
            item_cons.extend([[ids for _, ids in cons[i]]] + [[] for _ in pieces[1:]])
            item_avoid.extend([avoid_ids[i]] * len(pieces))
        hyps = self.search_ids(items, item_prefixes if any(item_prefixes) else None,
                               item_cons if any(item_cons) else None, item_avoid if any(item_avoid) else None)
        grouped: list[list[list[Hypothesis]]] = [[] for _ in lines]
        sources: list[list[list[int]]] = [[] for _ in lines]
        for i, h, ids in zip(owner, hyps, items):
            grouped[i].append(h)
            sources[i].append(ids)
        copy_attention: dict[int, torch.Tensor] = {}
        if self.copier is not None:
            mend = [any(self._needs_mending(ids, h.tokens) for ids, hs in zip(sources[i], parts) for h in hs)
                    for i, parts in enumerate(grouped)]
            copy_attention = self._copy_attention([(ids, h) for i in range(len(lines)) if mend[i]
                                                   for ids, hs in zip(sources[i], grouped[i]) for h in hs])
        if self.protector is not None:  # what the best translations lacked, before any mending
            self.placeholder_counts["lacked"] += sum(len(self._lacking(ids, hs[0].tokens))
                                                     for i in range(len(lines)) for ids, hs in zip(sources[i], grouped[i]) if hs)
        results = [self._result(lines[i], encoded[i], parts, sources[i], len(prefix_ids[i]), copy_attention)
                   for i, parts in enumerate(grouped)]
        return self._check_constraints(results, grouped, sources, cons, first_line)

    def _segment_phrases(self, n: int, constraints: Sequence[Sequence[str]] | None,
                         avoid: Sequence[Sequence[str]] | None, written: Sequence[Sequence[str]] | None = None,
                         ) -> tuple[list[list[tuple[str, list[int]]]], list[list[list[int]]]]:
        """Per line: its constraints as (phrase as written, target ids), its avoid list as target ids
        (every segmentation of each phrase). written: the constraints as the user wrote them, when
        `constraints` are their masked forms."""
        for name, given in (("constraint lists", constraints), ("avoid lists", avoid)):
            if given is not None and len(given) != n:
                raise ValueError(f"{len(given)} {name} for {n} lines")
        shown = written or constraints
        cons = [[(name, forms[0]) for p, name in zip(constraints[i] if constraints else [], shown[i] if shown else [])
                 if (forms := segmentations(self.tgt_vocab, p))] for i in range(n)]
        avoid_ids = [[f for p in (avoid[i] if avoid else []) for f in segmentations(self.tgt_vocab, p)]
                     for i in range(n)]
        return cons, avoid_ids

    def _check_constraints(self, results: list[Translation], grouped: list[list[list[Hypothesis]]],
                           sources: list[list[list[int]]], cons: list[list[tuple[str, list[int]]]],
                           first_line: int) -> list[Translation]:
        """Mark the constraint pieces of each line's translation, and warn about each constraint it lacks."""
        for i, phrases in enumerate(cons):
            if not phrases:
                continue
            best = [t for part in grouped[i] if part for t in part[0].tokens]
            ids = [p for _, p in phrases]
            results[i] = dataclasses.replace(results[i], constraint_tokens=constraint_marks(best, ids) + [False])
            missing = [text for text, p in phrases if not contains(best, p)]
            if missing:
                need = sum(len(p) for p in {tuple(p) for p in ids})
                limit = int(self.search.max_lengths(self.model, torch.tensor([len(sources[i][0]) + 1]))[0])
                why = (f"together they need {need} pieces, more than the length limit of {limit}" if need > limit
                       else "the search found no translation with it within the length limit")
                self.warn(f"line {first_line + i}: constraint{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)} not in the translation ({why})")
        return results

    def _lacking(self, src_ids: Sequence[int], tgt_ids: Sequence[int]) -> set[str]:
        """The placeholders of a source that its translation lacks (their indices, as text)."""
        have = {k for p in self.src_vocab.pieces(src_ids) for k in PLACEHOLDER.findall(p)}
        return have - {k for p in self.tgt_vocab.pieces(tgt_ids) for k in PLACEHOLDER.findall(p)} if have else set()

    def _needs_mending(self, src_ids: Sequence[int], tgt_ids: Sequence[int]) -> bool:
        """Whether the copy step has work on a hypothesis: unseen words to copy, placeholders to place."""
        return ((self.copy_unseen and self.copier.needed(src_ids, tgt_ids))
                or (self.protector is not None and bool(self._lacking(src_ids, tgt_ids))))

    def _restore(self, tr: Translation, masked: Masked) -> Translation:
        """A translation of a masked line with the placeholders' values put back (a value that no
        hypothesis holds, with no attention to place it by, is appended) and its word alignment
        renumbered over the line's and the translation's own words."""
        nbest, best = [], None
        for text, score in tr.nbest:
            restored = masked.restore(text)
            text = restored.text
            for k in restored.missing:
                text = insert(text, masked.values[k], len(text.split()))
            if best is None:
                best = restored
                self.placeholder_counts["appended"] += len(restored.missing)
            nbest.append((text, score))
        alignment = tr.alignment
        if alignment is not None and best is not None:
            src = source_words(masked)
            alignment = sorted({(src[s], best.words[t]) for s, t in alignment
                                if s < len(src) and t < len(best.words) and best.words[t] is not None})
        copies = [best.words[t] for t in tr.copies if best is not None and t < len(best.words)
                  and best.words[t] is not None]
        return dataclasses.replace(tr, text=nbest[0][0] if nbest else tr.text, nbest=nbest, alignment=alignment,
                                   copies=copies)

    def _copy_attention(self, pairs: list[tuple[list[int], Hypothesis]]) -> dict[int, torch.Tensor]:
        """id(hypothesis) -> its teacher-forced attention from layer copy_layer (mt.decode.scorer, one
        batched pass), for the hypotheses whose lines the copy step mends."""
        if not pairs:
            return {}
        scorer = Scorer(self.model, self.src_vocab, self.tgt_vocab, device=self.device,
                        batch_tokens=self.batch_tokens, return_attention=True)
        with self.model.attention_layer_set(self.copy_layer):
            scored = scorer.score_ids([ids for ids, _ in pairs], [h.tokens for _, h in pairs])
        return {id(h): s.attention for (_, h), s in zip(pairs, scored) if s.attention is not None}

    def _split(self, ids: list[int]) -> list[list[int]]:
        """A line's ids in pieces of at most max_input_tokens, each cut before a word (a piece
        that starts with SentencePiece's '▁') where the piece holds one, so no word is split."""
        step = self.max_input_tokens
        if len(ids) <= step:
            return [ids]  # an empty line (with a prefix) too
        word_start = [p.startswith("\u2581") for p in self.src_vocab.pieces(ids)]
        pieces, pos = [], 0
        while len(ids) - pos > step:
            cut = next((j for j in range(pos + step, pos, -1) if word_start[j]), pos + step)
            pieces.append(ids[pos:cut])
            pos = cut
        pieces.append(ids[pos:])
        return pieces

    def _result(self, line: str, src_ids: list[int], parts: list[list[Hypothesis]], sources: list[list[int]],
                prefix_len: int = 0, copy_attention: dict[int, torch.Tensor] | None = None) -> Translation:
        """A line's Translation from its parts' hypotheses; copy_attention: the attention that places
        copied words, by id(hypothesis), for the hypotheses whose unseen source words are copied."""
        if not parts:
            return Translation(text="", nbest=[("", 0.0)], alignment=[] if self.alignments else None)
        best = [p[0] for p in parts if p]
        tokens = [t for h in best for t in h.tokens]
        pieces = self.tgt_vocab.pieces(tokens) + ["</s>"]
        # a cut line: one </s> at the end, the pieces' own eos scores summed into it
        token_scores = [s for h in best for s in (h.token_scores or [])[:-1]]
        token_scores.append(sum((h.token_scores or [0.0])[-1] for h in best))
        copy_attention = copy_attention or {}
        mend = any(id(h) in copy_attention for h in best)
        line_words = source_word_ids(self.src_vocab, line, src_ids) if self.alignments or mend else None
        src_words = line_words if line_words is not None else word_ids(self.src_vocab.pieces(src_ids))
        alignment = links_from(self._word_attention(src_words, sources, best)) if self.alignments else None
        mend = mend and line_words is not None  # a copy needs the line's own words
        n_words = len(line.split())
        if len(parts) > 1:
            # one detokenisation of all pieces' tokens: the spaces between them are the vocabulary's
            # (none for a language written without spaces), not a join's
            text, copies = self.tgt_vocab.decode(tokens), []
            if mend:
                placing = self._word_attention(src_words, sources, best, copy_attention, n_words)
                text, alignment, copies = (self._mend(line, tokens, placing, prefix_len, alignment)
                                           or (text, alignment, copies))
            score = sum(h.score for h in best)
            return Translation(text=text, nbest=[(text, score)], pieces=len(parts), tokens=pieces,
                               token_scores=token_scores, alignment=alignment, copies=copies, token_ids=tokens)
        nbest, copies = [], []
        for k, h in enumerate(parts[0]):
            text = self.tgt_vocab.decode(h.tokens)
            if mend:  # every hypothesis of the list; the alignment and the copies are the best one's
                placing = self._word_attention(src_words, sources, [h], copy_attention, n_words)
                mended = self._mend(line, h.tokens, placing, prefix_len, alignment if k == 0 else None)
                if mended is not None:
                    text = mended[0]
                    alignment, copies = (mended[1], mended[2]) if k == 0 else (alignment, copies)
            nbest.append((text, h.score))
        return Translation(
            text=nbest[0][0] if nbest else "",
            nbest=nbest,
            src_pieces=self.src_vocab.pieces(src_ids) + ["</s>"],
            attention=best[0].attention if best else None,
            tokens=pieces,
            token_scores=token_scores,
            alignment=alignment,
            copies=copies,
            token_ids=tokens,
            src_ids=list(src_ids),
        )

    def _mend(self, line: str, tokens: list[int], placing: torch.Tensor, prefix_len: int,
              alignment: list[tuple[int, int]] | None) -> tuple[str, list[tuple[int, int]] | None, list[int]] | None:
        """The text of `tokens` with the line's unseen words copied (placed by `placing`), `alignment`
        (None: not asked for) with the target words renumbered as they moved, and the copies' target
        words; None when nothing is copied."""
        also = None
        if self.protector is not None:  # the placeholders the output lacks, at the line's words that hold them
            present = set(PLACEHOLDER.findall(self.tgt_vocab.decode(tokens)))
            also = {w: "".join(placeholder(int(k)) for k in PLACEHOLDER.findall(word) if k not in present)
                    for w, word in enumerate(line.split()) if set(PLACEHOLDER.findall(word)) - present}
        mended = (self.copier.mend(line, tokens, placing, prefix_len, self.copy_unseen, also)
                  if self.copier is not None else None)
        if mended is None:
            return None
        text, position, copies = mended
        if alignment is not None:  # a copied word's links are its copy's
            replaced = {t for _, t in copies}
            alignment = sorted({(s, position[t]) for s, t in alignment if position[t] not in replaced} | set(copies))
        return text, alignment, sorted(t for _, t in copies)

    def _word_attention(self, src_words: list[int], sources: list[list[int]], best: list[Hypothesis],
                        attention: dict[int, torch.Tensor] | None = None, n_src: int = 0) -> torch.Tensor:
        """[target words, source words] attention of a line (mt.decode.align.word_attention); src_words: the
        word of each of the line's source pieces (the parts' pieces in order). A cut line's words
        are numbered over the whole line (the pieces of all parts together, as the text is
        detokenised); each part fills its own block."""
        tgt_words = word_ids([p for h in best for p in self.tgt_vocab.pieces(h.tokens)])
        # columns: the line's words (its last ones may have no piece of their own: unknown words
        # that a word vocabulary joined into the unknown piece before them)
        shape = (max(tgt_words, default=-1) + 1, max(max(src_words, default=-1) + 1, n_src))
        matrix = torch.zeros(shape)
        src_start = tgt_start = 0
        for ids, h in zip(sources, best):
            attn = h.attention if attention is None else attention.get(id(h))
            if attn is not None:
                matrix += word_attention(attn, src_words[src_start: src_start + len(ids)],
                                         tgt_words[tgt_start: tgt_start + len(h.tokens)], shape)
            src_start += len(ids)
            tgt_start += len(h.tokens)
        return matrix

    def stream(self, lines: Iterable[str | tuple[str, str]], buffer_lines: int = 1000) -> Iterator[Translation]:
        """Translate an iterable of lines, or of (line, target prefix) pairs, or of (line, target
        prefix, {"constraints": [...], "avoid": [...]}) triples, chunk by chunk, yielding results in
        order: memory stays bounded by `buffer_lines` whatever the input size."""
        chunk: list[str] = []
        prefixes: list[str] = []
        cons: list[list[str]] = []
        avoid: list[list[str]] = []
        first = 1
        for item in lines:
            line, prefix, controls = (tuple(item) + ({},))[:3] if isinstance(item, tuple) else (item, "", {})
            chunk.append(line)
            prefixes.append(prefix)
            cons.append(controls.get("constraints", []))
            avoid.append(controls.get("avoid", []))
            if len(chunk) >= buffer_lines:
                yield from self._translate_chunk(chunk, first, prefixes, cons, avoid)
                first += len(chunk)
                chunk, prefixes, cons, avoid = [], [], [], []
        if chunk:
            yield from self._translate_chunk(chunk, first, prefixes, cons, avoid)

    def _translate_chunk(self, chunk: list[str], first: int, prefixes: list[str], cons: list[list[str]],
                         avoid: list[list[str]]) -> list[Translation]:
        """One chunk of `stream`: prefixes, constraints and avoid lists passed only where a line has one."""
        return self.translate(chunk, first, prefixes if any(prefixes) else None,
                              constraints=cons if any(cons) else None, avoid=avoid if any(avoid) else None)


def jsonl_items(lines: Iterable[str], name: str) -> Iterator[tuple]:
    """(text, prefix) from JSON lines: {"text": "...", "prefix": "..."} ("prefix" optional); (text,
    prefix, {"constraints": [...], "avoid": [...]}) when a line has "constraints" or "avoid" (lists
    of strings)."""
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MTError(f"{name}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise MTError(f'{name}:{n}: expected a JSON object with a "text" string, got {line.strip()[:60]!r}')
        prefix = obj.get("prefix", "")
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str):
            raise MTError(f'{name}:{n}: "prefix" must be a string, got {type(prefix).__name__}')
        controls = {key: phrase_list(obj[key], f'{name}:{n}: "{key}"') for key in ("constraints", "avoid")
                    if obj.get(key) is not None}
        yield (obj["text"], prefix, controls) if controls else (obj["text"], prefix)


def phrase_list(value, where: str) -> list[str]:
    """A JSON value that must be a list of strings (phrases), or an MTError saying so at `where`."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise MTError(f"{where} must be a list of strings, got {json.dumps(value, ensure_ascii=False)[:60]}")
    return value


def with_constraints(items: Iterator, constraint_lines: Iterator[str], name: str,
                     constraints_name: str) -> Iterator[tuple[str, str, dict]]:
    """(line, prefix, {"constraints": [...]}) from lines (or (line, prefix) pairs) and a line-aligned
    stream of JSON lists of strings (an empty line: none); an MTError naming the bad line."""
    pairs = paired_lines(items, constraint_lines, name, constraints_name, ": one JSON list per input line ([] for none)")
    for n, (item, raw) in enumerate(pairs, start=1):
        line, prefix = item if isinstance(item, tuple) else (item, "")
        try:
            value = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError as e:
            raise MTError(f"{constraints_name}:{n}: not JSON ({e.msg}); expected a list of strings") from None
        yield line, prefix, {"constraints": phrase_list(value, f"{constraints_name}:{n}")}


def with_prefixes(lines: Iterator[str], prefixes: Iterator[str], name: str, prefix_name: str) -> Iterator[tuple[str, str]]:
    """(line, prefix) pairs of two line-aligned streams; an MTError when one is longer."""
    return paired_lines(lines, prefixes, name, prefix_name, ": one prefix per input line (an empty line for none)")


def paired_lines(a: Iterator[str], b: Iterator[str], name_a: str, name_b: str, hint: str = "") -> Iterator[tuple[str, str]]:
    """Pairs of two line-aligned streams, lazily; when one ends before the other, an MTError naming
    both files and their line counts (the rest of the longer one is counted, not kept)."""
    n = 0
    while True:
        x, y = next(a, None), next(b, None)
        if x is None or y is None:
            break
        n += 1
        yield x, y
    if x is not None or y is not None:
        rest_a = (x is not None) + sum(1 for _ in a)
        rest_b = (y is not None) + sum(1 for _ in b)
        raise MTError(f"{name_a} has {n + rest_a} lines but {name_b} has {n + rest_b}{hint}")
