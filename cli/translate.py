"""Translate text with a trained run: one output line per input line, in order (stdin to stdout by default)."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import IO, Optional

import typer

from mt import MTError
from mt.config import is_run_dir
from mt.files import publish, temp_file

EPILOG = """\b
Examples:
  mt translate -m runs/demo < input.txt > output.txt
  mt translate -m runs/m30k --beam 5 -i test.en -o test.hyp
  mt translate -m runs/m30k --greedy --batch-tokens 8000 -i big.txt -o big.hyp
  mt translate -m runs/m30k --int8 -i big.txt -o big.hyp        # int8 on the CPU: 2-5x faster
  mt translate -m runs/m30k --dtype bfloat16 < in.txt > out.txt # GPUs, CPUs with AVX512-BF16: ~2x
  mt translate -m runs/m30k --n-best 3 --beam 5 < in.txt        # Moses format: i ||| text ||| score
  mt translate -m runs/m30k --json < in.txt                     # one JSON object per input line
  mt translate -m runs/demo --attention-plot plots/ < in.txt    # one PNG heatmap per sentence
"""


class Output:
    """stdout, or a file written under a temporary name and renamed on success only, so a failed
    run never leaves a half-written output file (nor destroys an existing one). A symbolic link is
    followed (its target is replaced, the link stays); a path that is not a regular file (/dev/null,
    a named pipe, /dev/stdout) is written to directly."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.tmp: Optional[Path] = None
        self.direct = False  # written in place (a device or a pipe), closed at the end
        if path is None:
            # input is read as UTF-8 whatever the locale says; the output is written the same way
            if hasattr(sys.stdout, "reconfigure") and (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
                sys.stdout.reconfigure(encoding="utf-8")
            self.stream: IO[str] = sys.stdout
            return
        if path.is_dir():
            raise MTError(f"{path}: is a directory")
        if _written_in_place(path):
            try:  # appending: /dev/stdout may be a file the shell opened with >>
                self.stream = open(path, "a", encoding="utf-8", newline="\n")
            except OSError as e:
                raise MTError(f"{path}: cannot write ({e.strerror})") from None
            self.direct = True
            return
        self.path = path = _resolve(path) if path.is_symlink() else path
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise MTError(f"{parent}: no such directory for the output file")
        try:
            fd, self.tmp = temp_file(path)
        except OSError as e:
            raise MTError(f"{path}: cannot write ({e.strerror})") from None
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text: str) -> None:
        self.stream.write(text)
        if self.tmp is None:
            self.stream.flush()  # output appears as it goes

    def commit(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            publish(self.tmp, self.path)
            self.tmp = None
        elif self.direct:
            self.stream.close()

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        elif self.direct:
            try:
                self.stream.close()
            except OSError:  # a reader that went away (a closed pipe)
                pass


#: characters that a line-based reader (Python's str.splitlines included) takes as a line end: a
#: translation never contains one, so that the output keeps exactly one line per input line
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


def _format(tr, index: int, n_best: int, scores: bool, as_json: bool) -> str:
    text = _one_line(tr.text)
    nbest = [(_one_line(t), s) for t, s in tr.nbest] or [("", 0.0)]
    if as_json:
        obj = {"id": index, "translation": text, "score": nbest[0][1]}
        if n_best > 1:
            obj["nbest"] = [{"translation": t, "score": s} for t, s in nbest]
        if tr.pieces > 1:
            obj["pieces"] = tr.pieces
        return json.dumps(obj, ensure_ascii=False) + "\n"
    if n_best > 1:
        return "".join(f"{index} ||| {t} ||| {s:.4f}\n" for t, s in nbest)
    if scores:
        return f"{text}\t{nbest[0][1]:.4f}\n"
    return text + "\n"


def translate(
    model: Path = typer.Option(..., "--model", "-m", help="Run directory written by `mt train`."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Input file (plain or .gz) \\[default: stdin]."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file \\[default: stdout]."),
    beam: Optional[int] = typer.Option(None, "--beam", "-b", help="Beam size (beam search) \\[default: the run's decode.beam]."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy search."),
    sample: bool = typer.Option(False, "--sample", help="Sampling search (see --temperature, --topk, --topp)."),
    n_best: Optional[int] = typer.Option(None, "--n-best", help="Output the K best hypotheses per line (Moses format, or in --json). Alone: a beam of at least K, or K samples when the run samples. A line translated in pieces gets one."),
    scores: bool = typer.Option(False, "--scores", help="Append a TAB and the hypothesis score to each line."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input line."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Padded source tokens x beam size per batch (default: the run's decode.batch_tokens, 4096)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, or a .safetensors file (e.g. from `mt average`)."),
    len_penalty: Optional[str] = typer.Option(None, "--len-penalty", help="gnmt, d2l or none."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Length penalty exponent."),
    max_len_a: Optional[float] = typer.Option(None, "--max-len-a", help="Max target length = a * source length + b."),
    max_len_b: Optional[int] = typer.Option(None, "--max-len-b", help="See --max-len-a."),
    min_len: Optional[int] = typer.Option(None, "--min-len", help="Minimum target length (tokens)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature."),
    topk: Optional[int] = typer.Option(None, "--topk", help="Sample from the k most likely tokens (0: all)."),
    topp: Optional[float] = typer.Option(None, "--topp", help="Nucleus sampling mass (1: all)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    attention_plot: Optional[Path] = typer.Option(None, "--attention-plot", help="Write one attention heatmap PNG per sentence here."),
    max_input_tokens: Optional[int] = typer.Option(None, "--max-input-tokens", help="Longer lines are translated in pieces \\[default: 1024 or the model's limit]."),
    buffer_lines: Optional[int] = typer.Option(None, "--buffer-lines", help="Lines read before translating \\[default: 1000, 1 on a terminal]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    int8: bool = typer.Option(False, "--int8", help="int8 Linear/GRU/LSTM layers (CPU only): 2-5x faster for base-sized models; -0.1 BLEU on Multi30k."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 (about 2x faster on GPUs and on CPUs with AVX512-BF16 or AMX) or float16 (CUDA only)."),
) -> None:
    # every check that needs no model comes first, before `import torch` (seconds)
    if greedy + sample + (beam is not None) > 1:
        raise MTError("choose one of --beam, --greedy and --sample")
    for name, value in (("--beam", beam), ("--n-best", n_best), ("--batch-tokens", batch_tokens),
                        ("--buffer-lines", buffer_lines), ("--threads", threads),
                        ("--max-input-tokens", max_input_tokens)):
        if value is not None and value < 1:
            raise MTError(f"{name} must be >= 1, got {value}")
    for name, value in (("--max-len-a", max_len_a), ("--max-len-b", max_len_b), ("--min-len", min_len),
                        ("--topk", topk), ("--alpha", alpha)):
        if value is not None and value < 0:
            raise MTError(f"{name} must not be negative, got {value}")
    if temperature is not None and not temperature > 0:
        raise MTError(f"--temperature must be > 0, got {temperature}")
    if topp is not None and not 0 < topp <= 1:
        raise MTError(f"--topp must be in (0, 1], got {topp}")
    if len_penalty is not None and len_penalty not in ("gnmt", "d2l", "none"):
        raise MTError(f"--len-penalty must be gnmt, d2l or none, got {len_penalty!r}")
    if greedy and n_best is not None and n_best > 1:
        raise MTError("--n-best > 1 needs beam search or sampling, not --greedy")
    if beam is not None and n_best is not None and n_best > beam:
        raise MTError(f"--n-best ({n_best}) cannot exceed --beam ({beam})")
    if input is not None and not input.exists():
        raise MTError(f"{input}: no such file")
    if input is not None and input.is_dir():
        raise MTError(f"{input}: is a directory, not a text file")
    _check_output_path(output)
    if attention_plot is not None and attention_plot.exists() and not attention_plot.is_dir():
        raise MTError(f"--attention-plot {attention_plot}: exists and is not a directory")
    if not model.exists():
        raise MTError(f"{model}: no such run directory")
    if not is_run_dir(model):
        raise MTError(f"{model}: not a run directory (no config.yaml; train one with `mt train RECIPE.yaml`)")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise MTError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise MTError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if int8 and dtype != "float32":
        raise MTError("--int8 and --dtype exclude each other (int8 layers compute in float32 around int8 weights)")
    if dtype == "float16" and device == "cpu":
        raise MTError("--dtype float16 needs a CUDA device; use bfloat16 on the CPU")
    if int8 and device not in ("auto", "cpu"):
        raise MTError(f"--int8 runs on the CPU only (torch has no int8 kernels for {device}); use --device cpu")
    if checkpoint not in ("best", "last") and not Path(checkpoint).exists():
        raise MTError(f"{checkpoint}: no such checkpoint (use best, last, or a .safetensors file)")

    import torch

    from mt.data import iter_lines, open_binary
    from mt.plot import save_attention_plot
    from mt.translate import Translator, load_run, resolve_device, set_decoding_dtype

    dev = resolve_device("cpu" if int8 else device)  # before loading anything: `--device cuda` without a GPU fails at once
    if threads:
        torch.set_num_threads(threads)

    run = load_run(model, dev, checkpoint)
    if int8:
        from mt.quantize import quantize_int8

        quantize_int8(run.model)
    if dtype != "float32":
        set_decoding_dtype(run.model, dtype, dev, warn=lambda msg: print(f"mt: warning: {msg}", file=sys.stderr))
    changes = {k: v for k, v in dict(
        beam=beam, n_best=n_best, batch_tokens=batch_tokens, len_penalty=len_penalty, alpha=alpha,
        max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len, temperature=temperature, topk=topk, topp=topp,
        seed=seed).items() if v is not None}
    if beam is not None:
        changes["search"] = "beam"
    if greedy:
        changes["search"] = "greedy"
    if sample:
        changes["search"] = "sampling"
    base = run.config.decode
    if n_best is not None and n_best > 1 and not (greedy or sample or beam is not None):
        # --n-best K alone asks for K hypotheses of the run's search: K samples when it samples, else
        # a beam wide enough (beam search even if the run decodes greedily)
        if base.search != "sampling":
            changes["search"] = "beam"
            changes["beam"] = max(base.beam, n_best)
    decode = replace(base, **changes)
    if decode.search == "greedy" and decode.n_best > 1:
        raise MTError("--n-best > 1 needs beam search or sampling")
    from mt.search import build_search

    translator = Translator(run.model, run.src_vocab, run.tgt_vocab,
                            build_search(decode, return_attention=attention_plot is not None), dev,
                            decode.batch_tokens, max_input_tokens)
    if attention_plot is not None:
        try:
            attention_plot.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MTError(f"--attention-plot {attention_plot}: cannot create the folder ({e.strerror})") from None

    source = open_binary(input) if input is not None else sys.stdin.buffer
    try:
        name = str(input) if input is not None else "stdin"
        interactive = input is None and sys.stdin.isatty()
        buffer = buffer_lines or (1 if interactive else 1000)
        out = Output(output)
        try:
            for index, tr in enumerate(translator.stream(iter_lines(source, name), buffer)):
                out.write(_format(tr, index, decode.n_best, scores, as_json))
                if attention_plot is not None and tr.attention is not None:
                    save_attention_plot(attention_plot / f"{index + 1:06d}.png", tr.attention, tr.src_pieces,
                                        tr.tgt_pieces)
            out.commit()
        except BaseException:
            out.abort()
            raise
    finally:
        if input is not None:
            source.close()


def _check_output_path(path: Optional[Path]) -> None:
    """Fail before any work when the output file cannot be written (Output checks again when opening)."""
    if path is None:
        return
    if path.is_dir():
        raise MTError(f"{path}: is a directory")
    if _written_in_place(path):
        if not os.access(path, os.W_OK):
            raise MTError(f"{path}: cannot write (permission denied)")
        return
    path = _resolve(path) if path.is_symlink() else path
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MTError(f"{parent}: no such directory for the output file")
    if not os.access(parent, os.W_OK):
        raise MTError(f"{path}: cannot write (permission denied on {parent})")


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise MTError(f"{path}: cannot follow the symbolic link ({e})") from None


def _written_in_place(path: Path) -> bool:
    """Paths that must be opened and written, never renamed over: anything under /dev or /proc
    (/dev/null, /dev/stdout, /proc/self/fd/N: the last two may stand for a file the shell opened),
    and an existing path that is not a regular file (a named pipe)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    return path.exists() and not _resolve(path).is_file()
