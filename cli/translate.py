"""Translate text with a trained run: one output line per input line, in order (stdin to stdout by default)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from mt import MTError
from mt.cli.options import CHECKPOINT_HELP, check_at_least_one, decode_config, decoding_options
from mt.cli.score import parse_weights
from mt.config import load_config
from mt.device import check_device, check_precision
from mt.files import check_output_path
from mt.rundir import CONFIG, check_run_dir, checkpoints_per_run

EPILOG = """\b
Examples:
  mt translate -m runs/demo < input.txt > output.txt
  mt translate -m runs/m30k --beam 5 -i test.en -o test.hyp
  mt translate -m runs/m30k --greedy --batch-tokens 8000 -i big.txt -o big.hyp
  mt translate -m runs/m30k --int8 -i big.txt -o big.hyp        # int8 matrix products on the CPU
  mt translate -m runs/m30k --dtype bfloat16 < in.txt > out.txt # CPUs with native bf16 (AMX)
  mt translate -m runs/m30k --n-best 3 --beam 5 < in.txt        # Moses format: i ||| text ||| score
  mt translate -m runs/m30k --json < in.txt                     # one JSON object per input line
  mt translate -m runs/demo --attention-plot plots/ < in.txt    # one PNG heatmap per sentence
  mt translate -m runs/a -m runs/b -i test.en -o test.hyp       # an ensemble (same vocabulary)
  mt translate -m runs/m30k --prefix-file starts.de < in.txt    # outputs start with these (empty: free)
  mt translate -m runs/m30k --input-format jsonl < in.jsonl     # {"text": "...", "prefix": "..."}
  mt translate -m runs/m30k --constraints terms.jsonl < in.txt   # ["Vertrag"] per line: must be in the output
  mt translate -m runs/demo --alignments < in.txt               # text<TAB>0-0 1-2 2-1 (Pharaoh)
  mt translate -m runs/m30k --no-copy-unseen < in.txt           # leave words in unseen characters to the model
  mt translate -m runs/demo --beam 3 --trace tree.jsonl < in.txt # each line's beam search tree (JSON lines)
"""


#: characters that a line-based reader (Python's str.splitlines included) takes as a line end: a
#: translation never contains one, so that the output keeps exactly one line per input line
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


def _format(tr, index: int, n_best: int, scores: bool, as_json: bool, alignments: bool) -> str:
    from mt.decode.align import pharaoh

    text = _one_line(tr.text)
    nbest = [(_one_line(t), s) for t, s in tr.nbest] or [("", 0.0)]
    if as_json:
        obj = {"id": index, "translation": text, "score": nbest[0][1], "tokens": tr.tokens,
               "token_scores": tr.token_scores, "alignment": [list(link) for link in tr.alignment or []]}
        if n_best > 1:
            obj["nbest"] = [{"translation": t, "score": s} for t, s in nbest]
        if tr.pieces > 1:
            obj["pieces"] = tr.pieces
        if tr.constraint_tokens is not None:
            obj["constraint_tokens"] = tr.constraint_tokens
        return json.dumps(obj, ensure_ascii=False) + "\n"
    if n_best > 1:
        return "".join(f"{index} ||| {t} ||| {s:.4f}\n" for t, s in nbest)
    if scores:
        text = f"{text}\t{nbest[0][1]:.4f}"
    if alignments:
        text = f"{text}\t{pharaoh(tr.alignment or [])}"
    return text + "\n"


@decoding_options("translate")
def translate(
    model: list[Path] = typer.Option(..., "--model", "-m", help="Run directory written by `mt train`; repeat for an ensemble (the log of the runs' mean probability; same SentencePiece models)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Input file (plain or .gz) \\[default: stdin]."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file \\[default: stdout]."),
    scores: bool = typer.Option(False, "--scores", help="Append a TAB and the hypothesis score to each line."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input line (with --n-best: its hypotheses)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    checkpoint: list[str] = typer.Option(["best"], "--checkpoint", help=CHECKPOINT_HELP + "; once for every -m or once per -m."),
    ensemble_weights: Optional[str] = typer.Option(None, "--ensemble-weights", metavar="W1,W2,...", help="Each -m run's share of the ensemble's mixture (normalised; default equal)."),
    attention_plot: Optional[Path] = typer.Option(None, "--attention-plot", help="Write one attention heatmap PNG per sentence here."),
    max_input_tokens: Optional[int] = typer.Option(None, "--max-input-tokens", help="Longer lines are translated in pieces \\[default: 1024 or the model's limit]."),
    buffer_lines: Optional[int] = typer.Option(None, "--buffer-lines", help="Lines read before translating \\[default: 1000, 1 on a terminal]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    int8: bool = typer.Option(False, "--int8", help="int8 Linear/GRU/LSTM layers (CPU only): the matrix products move and multiply a quarter of the bytes of float32 ones, at a small cost in accuracy. Measured speed and BLEU: docs/performance.md."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 (half the bytes per weight; fast on CPUs that multiply bf16 natively, AVX512-BF16 or AMX) or float16 (CUDA only). Measured speed and BLEU: docs/performance.md."),
    prefix_file: Optional[Path] = typer.Option(None, "--prefix-file", help="Target text each translation starts with, one line per input line (empty: none); the search continues from it."),
    input_format: str = typer.Option("text", "--input-format", help="text (one sentence per line) or jsonl (one {\"text\": ..., \"prefix\": ..., \"constraints\": [...], \"avoid\": [...]} object per line; all but text optional)."),
    constraints_file: Optional[Path] = typer.Option(None, "--constraints", help="Phrases each translation must contain (beam search), one JSON list of strings per input line ([] or an empty line: none); a line whose translation lacks one is reported on stderr."),
    alignments: bool = typer.Option(False, "--alignments", help="Append a TAB and the source-target word alignment from the attention (Pharaoh format: 0-0 1-2 ...)."),
    trace: Optional[Path] = typer.Option(None, "--trace", metavar="FILE.jsonl", help="Write each line's beam search tree here, one JSON object per line (mt.decode.trace): per step the candidates, the kept and the finished hypotheses, and the returned path. Lines are translated one at a time."),
    **options,
) -> None:
    # options: the decoding options (mt.cli.options), None when not given: the run's decode section
    # every check that needs no model comes first, before `import torch` (seconds)
    _check_options(input, output, prefix_file, attention_plot, input_format, device, dtype, int8, alignments,
                   as_json, options["n_best"], constraints_file, buffer_lines=buffer_lines, threads=threads,
                   max_input_tokens=max_input_tokens)
    check_output_path(trace)
    for run_dir in model:
        check_run_dir(run_dir)
    decode = decode_config(load_config(model[0] / CONFIG).decode, **options)
    if trace is not None and decode.search != "beam":
        raise MTError(f"--trace records beam search, not {decode.search} search: give --beam K (--beam 1 is greedy search)")
    weights = parse_weights(ensemble_weights, len(model))
    checkpoints = checkpoints_per_run(model, checkpoint)
    from mt.decode.loading import load_for_decoding

    loaded = load_for_decoding(model, checkpoints=checkpoints, weights=weights, device=device, threads=threads,
                               int8=int8, dtype=dtype, attention_for="--alignments" if alignments else
                               "--attention-plot" if attention_plot is not None else None)
    translator = loaded.translator(decode, return_attention=attention_plot is not None or alignments or as_json,
                                   alignments=alignments or as_json, max_input_tokens=max_input_tokens)
    if attention_plot is not None:
        try:
            attention_plot.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MTError(f"--attention-plot {attention_plot}: cannot create the folder ({e.strerror})") from None
    format_line = lambda tr, index: _format(tr, index, decode.n_best, scores, as_json, alignments)  # noqa: E731
    if trace is not None:
        _write_traced(translator, trace, decode.n_best, format_line, lambda traced: _write_stream(
            translator, input, output, prefix_file, input_format, 1, traced, attention_plot, constraints_file))
    else:
        _write_stream(translator, input, output, prefix_file, input_format, buffer_lines, format_line, attention_plot,
                      constraints_file)


def _write_traced(translator, path: Path, n_best: int, format_line, write) -> None:
    """--trace: write(format) translates line by line (a buffer of one line, so that the search's
    last trees are the line's); format writes each line's tree to `path` (atomically) beside its output."""
    from mt.decode.trace import SearchTrace
    from mt.files import Output

    recorder = SearchTrace()
    translator.search.trace = recorder
    out = Output(path)

    def traced(tr, index: int) -> str:
        trees, recorder.trees = recorder.trees, []  # an empty line runs no search
        record: dict = {"id": index}
        if tr.pieces > 1:  # its pieces may have been searched in several batches: no one tree
            record["error"] = f"translated in {tr.pieces} pieces (longer than the model's input): no trace"
        elif trees:
            record.update(trees[0].to_dict(translator.tgt_vocab.pieces, n_best, tr.token_ids))
        else:
            record.update(steps=[], best=[], score=None)
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return format_line(tr, index)

    try:
        write(traced)
        out.commit()
    except BaseException:
        out.abort()
        raise


def _check_options(input, output, prefix_file, attention_plot, input_format, device, dtype, int8, alignments,
                   as_json, n_best, constraints_file=None, **at_least_one) -> None:
    """The checks of the command line that need neither torch nor a model (the decoding options'
    combinations are DecodeConfig.with_options')."""
    check_at_least_one(**at_least_one)
    check_device(device)
    check_precision(dtype, device, int8)
    for path, what in ((input, ""), (prefix_file, "--prefix-file "), (constraints_file, "--constraints ")):
        if path is not None and not path.exists():
            raise MTError(f"{what}{path}: no such file")
        if path is not None and path.is_dir():
            raise MTError(f"{what}{path}: is a directory, not a text file")
    if input_format not in ("text", "jsonl"):
        raise MTError(f"--input-format must be text or jsonl, got {input_format!r}")
    if input_format == "jsonl" and prefix_file is not None:
        raise MTError('--prefix-file and --input-format jsonl exclude each other: put the prefix in the "prefix" field')
    if input_format == "jsonl" and constraints_file is not None:
        raise MTError('--constraints and --input-format jsonl exclude each other: put them in the "constraints" field')
    if alignments and n_best is not None and n_best > 1 and not as_json:
        raise MTError("--alignments with --n-best > 1: the Moses n-best format has no place for them; use --json")
    check_output_path(output)
    if attention_plot is not None and attention_plot.exists() and not attention_plot.is_dir():
        raise MTError(f"--attention-plot {attention_plot}: exists and is not a directory")


def _write_stream(translator, input: Optional[Path], output: Optional[Path], prefix_file: Optional[Path],
                  input_format: str, buffer_lines: Optional[int], format_line, attention_plot: Optional[Path],
                  constraints_file: Optional[Path] = None) -> None:
    """Translate the input (stdin, a file) line by line into the output, atomically when a file;
    format_line(translation, index) is each input line's output text."""
    from mt.files import Output
    from mt.decode.plot import save_attention_plot
    from mt.data.text import iter_lines, open_binary
    from mt.decode.translator import jsonl_items, with_constraints, with_prefixes

    source = open_binary(input) if input is not None else sys.stdin.buffer
    prefixes = open_binary(prefix_file) if prefix_file is not None else None
    terms = open_binary(constraints_file) if constraints_file is not None else None
    try:
        name = str(input) if input is not None else "stdin"
        interactive = input is None and sys.stdin.isatty()
        items = iter_lines(source, name)
        if input_format == "jsonl":
            items = jsonl_items(items, name)
        elif prefixes is not None:
            items = with_prefixes(items, iter_lines(prefixes, str(prefix_file)), name, str(prefix_file))
        if terms is not None:
            items = with_constraints(items, iter_lines(terms, str(constraints_file)), name, str(constraints_file))
        out = Output(output)
        try:
            for index, tr in enumerate(translator.stream(items, buffer_lines or (1 if interactive else 1000))):
                out.write(format_line(tr, index))
                if attention_plot is not None and tr.attention is not None:
                    save_attention_plot(attention_plot / f"{index + 1:06d}.png", tr.attention, tr.src_pieces,
                                        tr.tokens)
            out.commit()
        except BaseException:
            out.abort()
            raise
    finally:
        if input is not None:
            source.close()
        if prefixes is not None:
            prefixes.close()
        if terms is not None:
            terms.close()
