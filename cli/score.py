"""Score given translations with a trained run (forced decoding): one output line per pair, in order.

Each line gets the model's total log-probability of the target (every subword piece and the final eos) and its length-normalised score (the search's length penalty: what beam search ranks by). Higher is better: filter a noisy corpus, rerank an n-best list. Several -m runs score as an ensemble.

Input: --src and --tgt files, line by line; without them, TAB-separated 'source<TAB>target' lines on stdin. --n-best-input reads --tgt as `mt translate --n-best` output (Moses 'i ||| text ||| score', i the 0-based source line) and writes the same format with this model's scores, each source's entries reranked (best new score first).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, Optional

import typer

from mt import MTError
from mt.cli.options import CHECKPOINT_HELP, check_at_least_one, decode_config, decoding_options
from mt.config import load_config
from mt.device import check_device
from mt.files import Output, check_output_path
from mt.rundir import CONFIG, check_run_dir, checkpoints_per_run

EPILOG = """\b
Examples:
  mt score -m runs/m30k --src test.en --tgt test.hyp                # log_prob<TAB>score per line
  paste test.en test.de | mt score -m runs/m30k > scores.txt        # TAB-separated pairs on stdin
  mt score -m runs/m30k --src train.en --tgt train.de --json -o train.scores.jsonl   # per-piece scores
  mt score -m runs/a -m runs/b --src test.en --tgt test.hyp         # an ensemble scores
  mt translate -m runs/a --n-best 8 -i test.en -o nbest.txt
  mt score -m runs/b --src test.en --tgt nbest.txt --n-best-input   # rerank with another model
  mt score -m runs/demo --src a.src --tgt a.tgt --alignments        # score<TAB>...<TAB>0-0 1-2 ...
"""


@decoding_options("score")
def score(
    model: list[Path] = typer.Option(..., "--model", "-m", help="Run directory written by `mt train`; repeat for an ensemble."),
    src: Optional[Path] = typer.Option(None, "--src", help="Source sentences (plain or .gz); with --tgt. Without both: TAB-separated pairs on stdin."),
    tgt: Optional[Path] = typer.Option(None, "--tgt", help="Target sentences to score, line-aligned with --src."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file \\[default: stdout]."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per pair: log_prob, score, tokens, token_scores."),
    n_best_input: bool = typer.Option(False, "--n-best-input", help="--tgt is an n-best list ('i ||| text ||| score'); writes it back with this model's scores, each source's entries sorted best first."),
    alignments: bool = typer.Option(False, "--alignments", help="Append a TAB and the word alignment (Pharaoh 'src-tgt' pairs)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    checkpoint: list[str] = typer.Option(["best"], "--checkpoint", help=CHECKPOINT_HELP + "; once for all runs or once per -m."),
    ensemble_weights: Optional[str] = typer.Option(None, "--ensemble-weights", metavar="W1,W2,...", help="Each -m run's share of the ensemble's mixture (normalised; default equal)."),
    buffer_lines: int = typer.Option(1000, "--buffer-lines", help="Pairs read before scoring."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    **options,
) -> None:
    # options: the decoding options mt score takes (mt.cli.options), None when not given: the run's
    _check(model, src, tgt, output, device, n_best_input, buffer_lines, threads, checkpoint)
    weights = parse_weights(ensemble_weights, len(model))
    decode = decode_config(load_config(check_run_dir(model[0]) / CONFIG).decode, **options)
    run, scorer = _load_scorer(model, checkpoint, weights, decode, device, threads, alignments)
    streams: list = []  # the files opened here
    try:
        items = _input_pairs(src, tgt, n_best_input, streams)
        where = "stdin" if src is None else str(tgt) if n_best_input else f"{src} and {tgt}"
        _write_scores(scorer, items, output, buffer_lines, where,
                      lambda scored, index, source, text: _format(scored, index, source, text, run, as_json,
                                                                  n_best_input, alignments),
                      rerank=n_best_input, as_json=as_json)
    finally:
        for stream in streams:
            stream.close()


def _load_scorer(model, checkpoint, weights, decode, device: str, threads, alignments: bool):
    """The run(s) on the device (several: an ensemble) and their Scorer."""
    from mt.decode.loading import load_for_decoding
    from mt.decode.scorer import Scorer
    from mt.decode.search import LengthPenalty

    loaded = load_for_decoding(model, checkpoints=checkpoint, weights=weights, device=device, threads=threads)
    run = loaded.run
    if alignments:
        run.model.set_attention_layer(decode.alignment_layer)
    scorer = Scorer(run.model, run.src_vocab, run.tgt_vocab, LengthPenalty(decode.len_penalty, decode.alpha),
                    loaded.device, decode.batch_tokens, return_attention=alignments,
                    placeholders=decode.placeholders, protect=decode.protect)
    return run, scorer


def _input_pairs(src: Optional[Path], tgt: Optional[Path], n_best_input: bool,
                 streams: list) -> Iterator[tuple[int, tuple[str, str]]]:
    """(id, (source, target)) pairs: TAB-separated on stdin, two line-aligned files, or a source file
    and an n-best list (id: the source line). The files opened are added to `streams`."""
    from mt.data.text import iter_lines, open_binary
    from mt.decode.translator import paired_lines

    if src is None:
        return enumerate(_tab_pairs(iter_lines(sys.stdin.buffer, "stdin")))
    streams += [open_binary(src), open_binary(tgt)]
    src_lines, tgt_lines = iter_lines(streams[0], str(src)), iter_lines(streams[1], str(tgt))
    if n_best_input:
        return _nbest_pairs(src_lines, list_nbest(tgt_lines, str(tgt)), str(src), str(tgt))
    return enumerate(paired_lines(src_lines, tgt_lines, str(src), str(tgt)))


def _write_scores(scorer, items, output: Optional[Path], buffer_lines: int, where: str, format_line,
                  rerank: bool, as_json: bool) -> None:
    """Score the pairs as they stream in and write format_line(scored, id, source, target) for each,
    in order, or (rerank) each source's entries best first; `-o` is written atomically."""
    pending: deque[tuple[int, str, str]] = deque()  # (id, source, target) of the pairs being scored

    def pairs() -> Iterator[tuple[str, str]]:
        for index, (s, t) in items:
            pending.append((index, s, t))
            yield s, t

    out = Output(output)
    group: list[tuple[int, float, str]] = []  # rerank: one source's entries, until the next
    try:
        for number, scored in enumerate(scorer.stream(pairs(), buffer_lines), start=1):
            index, source, text = pending.popleft()
            if scored.error is not None:
                print(f"mt: warning: {where}, line {number}: {scored.error}: not scored, written as "
                      f"{'an error' if as_json else '-inf'}", file=sys.stderr)
            line = format_line(scored, index, source, text)
            if not rerank:
                out.write(line)
                continue
            if group and group[0][0] != index:
                _write_reranked(out, group)
            group.append((index, scored.score, line))
        _write_reranked(out, group)
        out.commit()
    except BaseException:
        out.abort()
        raise


def _write_reranked(out, group: list[tuple[int, float, str]]) -> None:
    """Write one source's n-best entries, best new score first (stable: ties keep the list's order),
    and empty `group`."""
    for _, _, line in sorted(group, key=lambda entry: -entry[1]):
        out.write(line)
    group.clear()


def parse_weights(text: Optional[str], runs: int) -> Optional[list[float]]:
    """--ensemble-weights 'W1,W2,...' -> one number >= 0 per -m run (not all 0), or None."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise MTError(f"--ensemble-weights: expected numbers separated by commas, got {text!r}") from None
    if len(weights) != runs:
        raise MTError(f"--ensemble-weights: {len(weights)} weights for {runs} runs (-m)")
    if any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise MTError(f"--ensemble-weights: weights must be >= 0 and not all 0, got {text!r}")
    return weights


def _check(model, src, tgt, output, device, n_best_input, buffer_lines, threads, checkpoint) -> None:
    """Every check that needs no model, before torch is imported."""
    check_device(device)
    check_output_path(output)
    if (src is None) != (tgt is None):
        raise MTError("give both --src and --tgt, or neither (TAB-separated pairs on stdin)")
    if n_best_input and src is None:
        raise MTError("--n-best-input needs --src and --tgt (the n-best list)")
    for path in (src, tgt):
        if path is not None and not path.exists():
            raise MTError(f"{path}: no such file")
        if path is not None and path.is_dir():
            raise MTError(f"{path}: is a directory, not a text file")
    check_at_least_one(buffer_lines=buffer_lines, threads=threads)
    for run in model:
        check_run_dir(run)
    checkpoints_per_run(model, checkpoint)


def _tab_pairs(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    for n, line in enumerate(lines, start=1):
        if line.count("\t") != 1:
            raise MTError(f"stdin:{n}: expected 'source<TAB>target' (one TAB), found {line.count(chr(9))} TABs; "
                          f"or give --src and --tgt")
        s, t = line.split("\t")
        yield s, t


def list_nbest(lines: Iterator[str], name: str) -> Iterator[tuple[int, str]]:
    """(source line, hypothesis) of each line of a Moses-format n-best list, ids never decreasing."""
    last = -1
    for n, line in enumerate(lines, start=1):
        fields = line.split(" ||| ")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise MTError(f"{name}:{n}: not an n-best line ('i ||| text ||| score')")
        i = int(fields[0])
        if i < last:
            raise MTError(f"{name}:{n}: source line {i} after {last}: an n-best list is ordered by source line")
        last = i
        yield i, fields[1]


def _nbest_pairs(src_lines: Iterator[str], entries: Iterator[tuple[int, str]], src_name: str,
                 tgt_name: str) -> Iterator[tuple[int, tuple[str, str]]]:
    """(source line id, (source, hypothesis)) for each n-best entry."""
    current, line = -1, None
    for i, text in entries:
        while current < i:
            line = next(src_lines, None)
            current += 1
            if line is None:
                raise MTError(f"{tgt_name}: an entry for source line {i}, but {src_name} has only {current} lines")
        yield i, (line, text)


def _format(s, index: int, source: str, text: str, run, as_json: bool, n_best_input: bool, alignments: bool) -> str:
    from mt.decode.align import pharaoh, source_word_ids, word_alignment, word_ids

    links = None
    if alignments and s.error is not None:
        links = []
    elif alignments:
        src_words = source_word_ids(run.src_vocab, source, s.src_tokens) or word_ids(run.src_vocab.pieces(s.src_tokens))
        links = word_alignment(s.attention, src_words, word_ids(run.tgt_vocab.pieces(s.tokens)))
    if as_json:
        obj = {"id": index, "log_prob": s.log_prob, "score": s.score,
               "tokens": run.tgt_vocab.pieces(s.tokens) + ["</s>"], "token_scores": s.token_log_probs}
        if n_best_input:
            obj["translation"] = text
        if s.error is not None:  # strict JSON has no -inf
            obj.update(log_prob=None, score=None, error=s.error)
        if links is not None:
            obj["alignment"] = [list(link) for link in links]
        return json.dumps(obj, ensure_ascii=False) + "\n"
    tail = f"\t{pharaoh(links)}" if links is not None else ""
    if n_best_input:
        return f"{index} ||| {text} ||| {s.score:.4f}{tail}\n"
    return f"{s.log_prob:.4f}\t{s.score:.4f}{tail}\n"
