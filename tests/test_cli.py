"""The `mt` command end to end: the installed console script in subprocesses, one tiny trained run.

Every failure must be clean: exit 1, one `mt: error:` line on stderr naming the problem, no traceback
(unless MT_DEBUG=1), and nothing lost or half-written. The happy path: train -> translate (-i/-o and
stdin/stdout, --json, --n-best, --scores, --batch-tokens, --device, --attention-plot, streaming, 100k
lines) -> evaluate; average; resume.

Each subprocess pays for its imports (`import torch`: seconds), so all commands are started at once
by the `jobs` fixture, on a few worker threads, and each test asserts on the result of its own
command; the commands that need no trained model run while the tiny run trains. Selecting one test
(-k) still runs every command. About 95 processes: some 4 CPU-minutes while every `mt` process
imports torch at start, well under half that once only the commands that load a model do.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import shlex
import shutil
import struct
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

import mt
from conftest import (
    DEMO_RECIPE,
    TINY_MAX_INPUT_TOKENS,
    TINY_TRAIN_STEPS,
    Result,
    assert_clean_failure,
    copy_run,
    mt_command,
    mt_env,
    run_mt,
)

WORKERS = max(2, min(4, (os.cpu_count() or 2) + 1))

LONG_LINE = " ".join(["the big apple helps a blue door"] * 80)  # ~5 times the tiny model's 127 positions
INPUT_LINES = [
    "the big apple helps a blue door.",
    "",
    "strange balls carry the chairs with the wolf.\r",  # a CRLF line ...
    "strange balls carry the chairs with the wolf.",  # ... translates like its LF twin
    "   ",
    LONG_LINE,
    "café naïve 東京 — ünïcödé ∑",
    "clever kings see two apples, while a warm letter chases three quiet cats on the quiet house.",
    "",
    # characters that str.splitlines() and other line-based readers take as line ends: the output
    # line must not contain them (one line in, one line out, for every reader)
    "the dog\u2028sees\x85the\x0cbig\x1ehouse\u2029.",
    "this house paints the garden behind the big field.",  # the file ends without a newline
]
N_INPUT = len(INPUT_LINES)
INPUT_BYTES = "\n".join(INPUT_LINES).encode("utf-8")
LONG_INDEX = INPUT_LINES.index(LONG_LINE)
REFERENCES = [f"reference sentence number {i} ." for i in range(N_INPUT)]
SHORT_LINES = ["the big apple helps a blue door.", "", "three quiet men see the dog.", "a cat sees the house."]
SHORT_BYTES = "".join(line + "\n" for line in SHORT_LINES).encode("utf-8")
PRECIOUS = "precious: must survive a failed run\n"
MOSES = re.compile(r"^(\d+) \|\|\| (.*) \|\|\| (-?\d+\.\d{4})$")


# ----------------------------------------------------------------------------------------------
# the workspace and the commands


class Jobs:
    """Commands started on a thread pool; a test waits for the result of its own command."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mt-job")
        self.futures: dict[str, Future] = {}
        self.paths: dict[str, Path] = {}

    def submit(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        assert name not in self.futures, name
        self.futures[name] = self.pool.submit(fn, *args, **kwargs)

    def mt(self, name: str, command: str, stdin: bytes | None = None, **kwargs: Any) -> None:
        """`command` is formatted with the workspace paths ({ws}, {run}, ...) and split like a shell."""
        argv = shlex.split(command.format(**{k: shlex.quote(str(v)) for k, v in self.paths.items()}))
        self.submit(name, run_mt, *argv, stdin=stdin, cwd=self.paths["ws"], **kwargs)

    def result(self, name: str) -> Any:
        return self.futures[name].result()


@dataclass
class Failure:
    """A command that must fail cleanly; `check(jobs, result)` asserts that nothing was lost."""

    command: str
    fragments: tuple[str, ...]
    stdin: bytes | None = None
    only_line: bool = True
    needs_run: bool = True
    check: Callable[[Jobs, Result], None] | None = None
    marks: list = field(default_factory=list)


def _untouched(name: str) -> Callable[[Jobs, Result], None]:
    def check(jobs: Jobs, r: Result) -> None:
        path = jobs.paths[name]
        assert path.read_text(encoding="utf-8") == PRECIOUS, f"{path} was changed by a failed run"
        leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, f"temporary files left behind: {leftovers}"

    return check


def _absent(name: str) -> Callable[[Jobs, Result], None]:
    def check(jobs: Jobs, r: Result) -> None:
        assert not jobs.paths[name].exists(), f"a failed `mt train` left {jobs.paths[name]} behind"

    return check


def _run_ro_unchanged(jobs: Jobs, r: Result) -> None:
    ro = jobs.paths["run_ro"]
    assert (ro / "config.yaml").read_bytes() == jobs.paths["tiny_config"].read_bytes(), "config.yaml changed"
    assert sorted(p.name for p in ro.iterdir()) == sorted(p.name for p in jobs.paths["run"].iterdir()
                                                           if p.name != "averaged.safetensors")


def _not_unpickled(jobs: Jobs, r: Result) -> None:
    assert not jobs.paths["pwned"].exists(), "trainer_state.pt was unpickled: it ran code"


ROOT_SKIP = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")

FAILURES: dict[str, Failure] = {
    # --- recipes and options of `mt train` (no trained model needed) ---------------------------
    "train-missing-recipe": Failure("train nope.yaml", ("recipe not found", "nope.yaml"), needs_run=False),
    "train-broken-yaml": Failure("train broken.yaml", ("broken.yaml", "not a valid YAML recipe"), needs_run=False),
    "train-recipe-invalid-utf8": Failure("train latin1.yaml", ("latin1.yaml",), needs_run=False),
    "train-unknown-recipe-key": Failure("train unknown_key.yaml --run-dir r_unknown", ("unknown recipe key 'train.max_stepz'",),
                                        needs_run=False, check=_absent("r_unknown")),
    "train-set-unknown-key": Failure("train files.yaml --run-dir r_set --set train.bogus=1",
                                     ("unknown recipe key 'train.bogus'",), needs_run=False, check=_absent("r_set")),
    "train-set-negative": Failure("train files.yaml --run-dir r_set --set train.max_steps=-5",
                                  ("train.max_steps must be >= 1", "-5"), needs_run=False, check=_absent("r_set")),
    "train-set-bad-type": Failure("train files.yaml --run-dir r_set --set train.lr=fast", ("train.lr", "number"),
                                  needs_run=False),
    "train-set-bad-choice": Failure("train files.yaml --run-dir r_set --set model.arch=lstm", ("model.arch", "lstm"),
                                    needs_run=False),
    "train-set-no-value": Failure("train files.yaml --run-dir r_set --set train.lr", ("--set", "key=value"),
                                  needs_run=False),
    "train-cuda": Failure("train files.yaml --run-dir r_cuda --set train.device=cuda", ("cuda", "not available"),
                          needs_run=False, check=_absent("r_cuda")),
    "train-line-counts": Failure("train files.yaml --run-dir r_count", ("a.src has 3 lines but a.tgt has 2",),
                                 only_line=False, needs_run=False, check=_absent("r_count")),
    "train-empty-corpus": Failure("train files.yaml --run-dir r_empty --set data.train_src=empty.src "
                                  "--set data.train_tgt=empty.tgt", ("empty.src", "empty corpus"),
                                  only_line=False, needs_run=False, check=_absent("r_empty")),
    "train-corpus-invalid-utf8": Failure("train files.yaml --run-dir r_utf8 --set data.train_src=bad.src "
                                         "--set data.train_tgt=bad.tgt", ("bad.src:2:", "invalid UTF-8"),
                                         only_line=False, needs_run=False, check=_absent("r_utf8")),
    "train-corpus-missing": Failure("train files.yaml --run-dir r_missing --set data.train_src=nope.src",
                                    ("nope.src", "no such file"), only_line=False, needs_run=False,
                                    check=_absent("r_missing")),
    "train-half-valid-pair": Failure("train files.yaml --run-dir r_half --set data.valid_src=a.src",
                                     ("data.valid_src", "data.valid_tgt"), needs_run=False, check=_absent("r_half")),
    "train-model-not-a-mapping": Failure("train files.yaml --run-dir r_model --set model=transformer",
                                         ("model", "expected a mapping"), needs_run=False, check=_absent("r_model")),
    "train-no-recipe": Failure("train", ("missing RECIPE",), needs_run=False),
    "train-recipe-and-resume": Failure("train files.yaml --resume {notrun}", ("either a RECIPE or --resume",),
                                       needs_run=False),
    "resume-not-a-run": Failure("train --resume {notrun}", ("not a run directory",), needs_run=False),
    "resume-missing": Failure("train --resume {ws}/nowhere", ("nowhere", "no such run directory"), needs_run=False),
    "translate-missing-run": Failure("translate -m {ws}/nowhere", ("nowhere", "no such run directory"),
                                     needs_run=False),
    "translate-not-a-run": Failure("translate -m {notrun}", ("not a run directory",), needs_run=False),
    "average-not-a-run": Failure("average {notrun} --last 2", ("not a run directory",), needs_run=False),
    # --- input and output files of `mt translate` -----------------------------------------------
    "translate-missing-input": Failure("translate -m {run} -i {ws}/nope.txt", ("nope.txt", "no such file")),
    "translate-input-is-dir": Failure("translate -m {run} -i {ws}", ("is a directory",)),
    "translate-unreadable-input": Failure("translate -m {run} -i {unreadable}", ("unreadable.txt", "permission denied"),
                                          marks=[ROOT_SKIP]),
    "translate-invalid-utf8-file": Failure("translate -m {run} -i {bad_utf8} -o {precious1} --buffer-lines 1",
                                           ("bad_utf8.txt:3:", "invalid UTF-8"), check=_untouched("precious1")),
    "translate-invalid-utf8-stdin": Failure("translate -m {run} --buffer-lines 1", ("stdin:2:", "invalid UTF-8"),
                                            stdin=b"the big apple.\nthe \xc3\x28 dog\nthree men.\n"),
    "translate-gz-corrupt": Failure("translate -m {run} -i {corrupt_gz} -o {precious2}", ("corrupt.txt.gz", "cannot read"),
                                    check=_untouched("precious2")),
    "translate-gz-corrupt-middle": Failure("translate -m {run} -i {midcorrupt_gz} -o {precious4}",
                                           ("midcorrupt.txt.gz", "cannot read"), check=_untouched("precious4")),
    "translate-huge-line": Failure("translate -m {run} -i {huge} -o {precious5}", ("huge.txt:2:", "line longer than"),
                                   check=_untouched("precious5")),
    "translate-output-dir-missing": Failure("translate -m {run} -i {short} -o {ws}/nodir/out.txt",
                                            ("nodir", "no such directory")),
    "translate-output-is-dir": Failure("translate -m {run} -i {short} -o {notrun}", ("is a directory",)),
    # --- option values --------------------------------------------------------------------------
    "beam-0": Failure("translate -m {run} -i {short} -o {precious3} --beam 0", ("--beam must be >= 1, got 0",),
                      check=_untouched("precious3")),
    "n-best-0": Failure("translate -m {run} --n-best 0", ("--n-best must be >= 1",)),
    "batch-tokens-0": Failure("translate -m {run} --batch-tokens 0", ("--batch-tokens must be >= 1",)),
    "buffer-lines-negative": Failure("translate -m {run} --buffer-lines -1", ("--buffer-lines must be >= 1",)),
    "max-len-b-negative": Failure("translate -m {run} --max-len-b -1", ("--max-len-b", "negative")),
    "max-len-a-negative": Failure("translate -m {run} --max-len-a -0.5", ("--max-len-a", "negative")),
    "min-len-negative": Failure("translate -m {run} --min-len -2", ("--min-len", "negative")),
    "temperature-0": Failure("translate -m {run} --sample --temperature 0", ("--temperature must be > 0",)),
    "len-penalty-unknown": Failure("translate -m {run} --len-penalty huge", ("--len-penalty", "huge")),
    "n-best-over-beam": Failure("translate -m {run} --beam 2 --n-best 3", ("--n-best (3)", "--beam (2)")),
    "n-best-greedy": Failure("translate -m {run} --greedy --n-best 2", ("--n-best", "--greedy")),
    "two-searches": Failure("translate -m {run} --greedy --beam 4", ("choose one of",)),
    "device-cuda": Failure("translate -m {run} --device cuda -i {short}", ("cuda", "not available")),
    "int8-cuda": Failure("translate -m {run} --int8 --device cuda -i {short}", ("--int8", "CPU only")),
    "dtype-unknown": Failure("translate -m {run} --dtype float64", ("--dtype", "float64")),
    "dtype-and-int8": Failure("translate -m {run} --int8 --dtype bfloat16", ("--int8", "--dtype")),
    "dtype-float16-cpu": Failure("translate -m {run} --dtype float16 --device cpu -i {short}", ("float16", "CUDA")),
    "dtype-float16-auto": Failure("translate -m {run} --dtype float16 -i {short} -o {precious6}", ("float16", "CUDA"),
                                  check=_untouched("precious6")),
    "device-unknown": Failure("translate -m {run} --device tpu", ("unknown device 'tpu'",)),
    # --- checkpoints that do not fit -----------------------------------------------------------
    "checkpoint-missing": Failure("translate -m {run} --checkpoint {ws}/nope.safetensors", ("nope.safetensors", "no such checkpoint")),
    "checkpoint-garbage": Failure("translate -m {run_garbage}", ("model.safetensors", "not a readable safetensors")),
    "checkpoint-foreign": Failure("translate -m {run} --checkpoint {foreign}",
                                  ("foreign.safetensors", "does not fit the model", "embed.weight")),
    "checkpoint-architecture": Failure("translate -m {run_rnn}", ("model.safetensors", "does not fit the model")),
    "checkpoint-size": Failure("translate -m {run_wide}", ("does not fit the model", "size mismatch")),
    "checkpoint-vocab-meta": Failure("translate -m {run_vocab_meta}", ("vocabulary mismatch", "trained with 999/999")),
    "checkpoint-vocab-spm": Failure("translate -m {run_vocab_spm}", ("does not fit the model", "size mismatch")),
    "spm-garbage": Failure("translate -m {run_spm_garbage}", ("spm.model", "not a SentencePiece model")),
    "run-config-unknown-key": Failure("translate -m {run_bad_config}", ("unknown recipe key 'model.colour'",)),
    "run-meta-not-an-object": Failure("translate -m {run_meta_list}", ("meta.json", "expected a JSON object")),
    "trainer-state-pickle": Failure("train --resume {run_pickle} --set train.max_steps=40",
                                    ("trainer_state.pt", "not a readable trainer state"), only_line=False,
                                    check=_not_unpickled),
    # --- run directories ------------------------------------------------------------------------
    "train-into-existing-run": Failure("train " + shlex.quote(str(DEMO_RECIPE)) + " --run-dir {run_ro}",
                                       ("already holds files", "--resume"), check=_run_ro_unchanged),
    "resume-model-change": Failure("train --resume {run_ro} --set model.d_model=8", ("model.d_model", "only train.*"),
                                   check=_run_ro_unchanged),
    "resume-unknown-key": Failure("train --resume {run_ro} --set train.bogus=1", ("unknown recipe key 'train.bogus'",),
                                  check=_run_ro_unchanged),
    "resume-cuda": Failure("train --resume {run_ro} --set train.device=cuda", ("cuda", "not available"),
                           check=_run_ro_unchanged),
    "average-last-0": Failure("average {run} --last 0", ("--last must be >= 1",)),
    "average-no-checkpoints": Failure("average {run_no_ckpt} --last 2", ("no checkpoints",)),
}

#: command-line syntax errors are reported by click before mt runs: exit 2, still one `mt: error:` line
USAGE_ERRORS = {
    "not-an-int": ("translate -m {notrun} --beam five", ("--beam",)),
    "unknown-option": ("translate -m {notrun} --beem 5", ("--beem",)),
    "missing-model": ("translate", ("--model",)),
    "unknown-command": ("transl8", ("transl8",)),
}

HELP = ["", "prepare", "train", "translate", "score", "evaluate", "average", "serve", "export", "data", "data get",
        "data list", "data synthetic"]
HELP_WITHOUT_EXAMPLES: dict[str, str] = {}  # commands whose help still lacks examples


def _write_workspace(ws: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {"ws": ws}

    def put(name: str, data: bytes | str) -> Path:
        path = ws / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        paths[name.split(".")[0]] = path
        return path

    put("input.txt", INPUT_BYTES)
    put("ref.txt", "".join(r + "\n" for r in REFERENCES))
    put("short.txt", SHORT_BYTES)
    put("bad_utf8.txt", b"the big apple.\nthree men.\nthe \xff\xfe dog\nlast line\n")
    whole = gzip.compress("".join(f"line {i} of a file cut short\n" for i in range(500)).encode("utf-8"))
    put("corrupt.txt.gz", whole[: len(whole) // 2])
    paths["corrupt_gz"] = ws / "corrupt.txt.gz"
    for i in (1, 2, 3):
        put(f"precious{i}.txt", PRECIOUS)
    # a gzip file damaged in the middle of its data (after ~350 good lines): zlib's own error, not an OSError
    long_gz = bytearray(gzip.compress("".join(f"line {i} of a long file\n" for i in range(20000)).encode("utf-8")))
    long_gz[1000:1016] = b"\xff" * 16
    put("midcorrupt.txt.gz", bytes(long_gz))
    paths["midcorrupt_gz"] = ws / "midcorrupt.txt.gz"
    put("huge.txt", b"a short line\n" + b"a" * (5 * 1024 * 1024) + b"\nlast\n")
    for i in (4, 5, 6):  # each in its own folder: the check looks for temporary files beside it
        (ws / f"p{i}").mkdir()
        paths[f"precious{i}"] = ws / f"p{i}" / f"precious{i}.txt"
        paths[f"precious{i}"].write_text(PRECIOUS, encoding="utf-8")
    put("a.src", "a b\nc d\ne f\n")
    put("a.tgt", "x\ny\n")
    put("empty.src", "")
    put("empty.tgt", "")
    put("bad.src", b"a b\nc \xc3\x28 d\n")
    put("bad.tgt", "x\ny\n")
    put("files.yaml", "name: files\ndata: {corpus: files, train_src: a.src, train_tgt: a.tgt}\nvocab: {size: 20}\n"
        "model: {d_model: 16, heads: 2, enc_layers: 1, dec_layers: 1, ff_dim: 16}\ntrain: {max_steps: 2}\n")
    put("unknown_key.yaml", "name: x\ntrain: {max_stepz: 3}\n")
    put("broken.yaml", "name: [x\n")
    put("latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    unreadable = put("unreadable.txt", "the big apple.\n")
    unreadable.chmod(0)
    (ws / "notrun").mkdir()
    paths["notrun"] = ws / "notrun"
    for name in ("r_unknown", "r_set", "r_cuda", "r_count", "r_empty", "r_utf8", "r_missing", "r_half", "r_model"):
        paths[name] = ws / name
    paths["pwned"] = ws / "PWNED"
    return paths


def _safetensors(tensors: dict[str, tuple[int, ...]]) -> bytes:
    """A valid safetensors file of zero float32 tensors (written by hand: no torch in the test process)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + bytes(offset)


def _edit_config(run: Path, edit: Callable[[dict], None]) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def _other_spm(dest: Path, sentences: list[str]) -> None:
    """A SentencePiece model of another size (100 pieces), with mt's special ids."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences), model_prefix=str(dest.with_suffix("")), vocab_size=100,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False, minloglevel=2,
    )


class _Evil:
    """Unpickling this writes a marker file: a loader that unpickles trainer_state.pt would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _make_run_copies(run: Path, ws: Path, paths: dict[str, Path]) -> None:
    paths["run"] = run
    paths["tiny_config"] = ws / "tiny_config.yaml"
    shutil.copyfile(run / "config.yaml", paths["tiny_config"])

    def copy(name: str) -> Path:
        paths[name] = copy_run(run, ws / name)
        return paths[name]

    copy("run_ro")
    (copy("run_garbage") / "model.safetensors").write_bytes(os.urandom(3000))
    _edit_config(copy("run_rnn"), lambda c: c.update(model={"arch": "rnn", "emb_dim": 16, "hidden": 16,
                                                           "enc_layers": 1, "dec_layers": 1}))
    _edit_config(copy("run_wide"), lambda c: c["model"].update(d_model=64))
    _edit_config(copy("run_bad_config"), lambda c: c["model"].update(colour="blue"))
    _edit_config(copy("run_sampling"), lambda c: c["decode"].update(search="sampling"))
    meta_path = copy("run_vocab_meta") / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(src_vocab_size=999, tgt_vocab_size=999)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    (copy("run_meta_list") / "meta.json").write_text("[]\n", encoding="utf-8")
    other = copy("run_vocab_spm")
    (other / "meta.json").unlink()  # without meta.json the weights themselves must refuse the vocabulary
    _other_spm(other / "spm.model", [line for line in INPUT_LINES + SHORT_LINES + REFERENCES if line.strip()] * 20)
    (copy("run_spm_garbage") / "spm.model").write_bytes(b"not a sentencepiece model" * 40)
    pickled = copy("run_pickle")
    state = pickled / "checkpoints" / (pickled / "checkpoints" / "latest").read_text().strip() / "trainer_state.pt"
    import pickle

    state.write_bytes(pickle.dumps(_Evil(paths["pwned"])))
    shutil.rmtree(copy("run_no_ckpt") / "checkpoints")
    paths["foreign"] = ws / "foreign.safetensors"
    paths["foreign"].write_bytes(_safetensors({"embed.weight": (10, 4), "proj.bias": (4,)}))


def _failure_params():
    for name, f in FAILURES.items():
        yield pytest.param(name, id=name, marks=f.marks)


@pytest.fixture(scope="session")
def jobs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    ws = tmp_path_factory.mktemp("cli")
    j = Jobs(WORKERS)
    j.paths = _write_workspace(ws)
    # while the tiny run trains: everything that needs no model
    j.submit("version", run_mt, "--version")
    for name, f in FAILURES.items():
        if not f.needs_run:
            j.mt(name, f.command, f.stdin)
    for name, (command, _) in USAGE_ERRORS.items():
        j.mt("usage:" + name, command)
    j.mt("debug", "translate -m {ws}/nowhere", env=mt_env(MT_DEBUG="1"))

    try:
        run = request.getfixturevalue("tiny_run")
    except BaseException:
        j.pool.shutdown(wait=False, cancel_futures=True)
        raise
    _make_run_copies(run, ws, j.paths)
    j.paths["resumed"] = copy_run(run, ws / "resumed")
    j.paths["averaged"] = copy_run(run, ws / "averaged")
    # the longest first
    j.mt("resume", "train --resume {resumed} --set train.max_steps=40")
    j.submit("100k", _translate_100k, run)
    j.submit("stream", _stream_first_lines, run)
    j.submit("average", _average_translate_evaluate, j.paths)
    (ws / "out.txt").write_text("an older file that a good run replaces\n", encoding="utf-8")
    j.mt("file", "translate -m {run} -i {input} -o {ws}/out.txt")
    j.mt("stdin", "translate -m {run}", stdin=INPUT_BYTES)
    j.mt("json", "translate -m {run} -i {input} --json --device cpu")
    j.mt("batch-tokens", "translate -m {run} -i {input} --batch-tokens 12")
    j.mt("int8", "translate -m {run} -i {input} --json --int8")
    j.mt("bf16", "translate -m {run} -i {input} --json --dtype bfloat16")
    j.mt("n-best", "translate -m {run} -i {short} --beam 3 --n-best 3 --device auto")
    j.mt("n-best-json", "translate -m {run} -i {short} --n-best 2 --json")
    for seed in (1, 2):
        j.mt(f"n-best-sampling-{seed}", f"translate -m {{run_sampling}} -i {{short}} --n-best 3 --json --seed {seed}")
    j.mt("scores", "translate -m {run} -i {short} --scores")
    j.mt("plot", "translate -m {run} -i {short} --attention-plot {ws}/plots --greedy "
         "--checkpoint {run}/checkpoints/step_00000015")
    j.submit("pipe-closed", _reader_goes_away, run)
    for name, f in FAILURES.items():
        if f.needs_run:
            j.mt(name, f.command, f.stdin)
    for command in HELP:
        j.mt("help:" + command, command + " --help")
    yield j
    j.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# jobs that drive a process themselves


def _popen(run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(mt_command() + ["translate", "-m", str(run), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mt_env())


def _drain(stream, sink: list[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: sink.append(stream.read()), daemon=True)
    t.start()
    return t


def _wait_rusage(p: subprocess.Popen) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of this very child (wait4, not the summed RUSAGE_CHILDREN)."""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss


def _stream_first_lines(run: Path) -> dict:
    """--buffer-lines 1: each translation appears on stdout while stdin is still open."""
    p = _popen(run, "--buffer-lines", "1", "--greedy")
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(p.stdout.readline, b"")] + [lines.put(b"")],
                     daemon=True).start()
    err: list[bytes] = []
    err_thread = _drain(p.stderr, err)
    got = []
    try:
        for text in (b"the big apple helps a blue door.\n", b"\n", b"three quiet men.\n"):
            p.stdin.write(text)
            p.stdin.flush()
            got.append(lines.get(timeout=180))  # stdin is still open
        p.stdin.close()
        tail = lines.get(timeout=60)
    except BaseException:
        p.kill()
        raise
    code, rss = _wait_rusage(p)
    err_thread.join(timeout=60)
    return {"lines": got, "tail": tail, "code": code, "rss_kib": rss, "stderr": b"".join(err).decode("utf-8", "replace")}


def _translate_100k(run: Path) -> dict:
    """100k lines through a pipe: output starts long before the input ends; memory stays flat."""
    n = 100_000
    pattern = SHORT_LINES + [SHORT_LINES[0]]  # every 5th line is empty (index 1 of 5)
    p = _popen(run, "--greedy", "--max-len-a", "0", "--max-len-b", "2")
    state = {"written": 0, "written_at_first_output": None, "count": 0, "empty_at": []}

    def read() -> None:
        for i, line in enumerate(p.stdout):
            if state["written_at_first_output"] is None:
                state["written_at_first_output"] = state["written"]
            if line == b"\n":
                state["empty_at"].append(i)
            state["count"] = i + 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    err: list[bytes] = []
    err_thread = _drain(p.stderr, err)
    chunk = 100
    block = "".join(pattern[i % len(pattern)] + "\n" for i in range(chunk)).encode("utf-8")
    try:
        for start in range(0, n, chunk):
            p.stdin.write(block)
            state["written"] = start + chunk
        p.stdin.close()
    except BrokenPipeError:
        pass
    code, rss = _wait_rusage(p)
    reader.join(timeout=60)
    err_thread.join(timeout=60)
    expected_empty = [i for i in range(n) if pattern[i % len(pattern)] == ""]
    return {"code": code, "count": state["count"], "n": n, "first": state["written_at_first_output"],
            "rss_kib": rss, "empty_ok": state["empty_at"] == expected_empty,
            "stderr": b"".join(err).decode("utf-8", "replace")}


def _reader_goes_away(run: Path) -> dict:
    """`mt translate ... | head -1`: when the reader closes the pipe, mt stops quietly."""
    p = _popen(run, "--buffer-lines", "1", "--greedy")
    err: list[bytes] = []
    err_thread = _drain(p.stderr, err)
    p.stdin.write(SHORT_BYTES * 50)
    p.stdin.close()
    first = p.stdout.readline()
    p.stdout.close()
    code = p.wait(timeout=180)
    err_thread.join(timeout=60)
    return {"first": first, "code": code, "stderr": b"".join(err).decode("utf-8", "replace")}


def _average_translate_evaluate(paths: dict[str, Path]) -> dict:
    run, ws = paths["averaged"], paths["ws"]
    out = {"average": run_mt("average", run, "--last", "2", cwd=ws)}
    out["translate"] = run_mt("translate", "-m", run, "--checkpoint", run / "averaged.safetensors",
                              "-i", paths["input"], "-o", ws / "averaged.hyp", cwd=ws)
    out["evaluate"] = run_mt("evaluate", "--hyp", ws / "averaged.hyp", "--ref", paths["ref"], "--json", cwd=ws)
    return out


# ----------------------------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("name", list(_failure_params()))
def test_fails_cleanly(jobs: Jobs, name: str) -> None:
    f = FAILURES[name]
    r = jobs.result(name)
    assert_clean_failure(r, *f.fragments, only_line=f.only_line)
    if f.check is not None:
        f.check(jobs, r)


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_usage_errors_are_one_line(jobs: Jobs, name: str) -> None:
    _, fragments = USAGE_ERRORS[name]
    assert_clean_failure(jobs.result("usage:" + name), *fragments, code=2)


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_usage_errors_exit_2_without_traceback(jobs: Jobs, name: str) -> None:
    r = jobs.result("usage:" + name)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == "", r.explain()


def test_trainer_state_warning_free(jobs: Jobs) -> None:
    """A trainer state that needs pickled code: refused with mt's own line, no torch warning, and
    no advice to load it with weights_only=False."""
    r = jobs.result("trainer-state-pickle")
    assert "Warning" not in r.stderr and "weights_only" not in r.stderr, r.explain()
    assert "refuses" in r.stderr, r.explain()


def test_debug_shows_traceback(jobs: Jobs) -> None:
    r = jobs.result("debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "MTError" in r.stderr, r.explain()


# ----------------------------------------------------------------------------------------------
# the happy path


def test_version(jobs: Jobs) -> None:
    r = jobs.result("version")
    assert r.returncode == 0 and r.stdout == f"mt {mt.__version__}\n", r.explain()


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, id=c or "mt", marks=[pytest.mark.xfail(strict=True, reason=HELP_WITHOUT_EXAMPLES[c])]
                  if c in HELP_WITHOUT_EXAMPLES else []) for c in HELP],
)
def test_help_has_examples(jobs: Jobs, command: str) -> None:
    r = jobs.result("help:" + command)
    assert r.returncode == 0 and "Usage" in r.stdout and r.stderr == "", r.explain()
    assert "Examples" in r.stdout and f"mt {command}".strip() in r.stdout.split("Examples", 1)[1], r.explain()


def test_tiny_run_directory(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.yaml", "spm.model", "model.safetensors", "meta.json", "metrics.jsonl", "checkpoints"} <= names
    meta = json.loads((tiny_run / "meta.json").read_text(encoding="utf-8"))
    assert meta["step"] == TINY_TRAIN_STEPS
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir() if p.is_dir()) == ["step_00000015", "step_00000030"]
    assert not [p for p in tiny_run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def _lines(r: Result) -> list[str]:
    assert r.returncode == 0, r.explain()
    assert r.stdout.endswith("\n") and "\r" not in r.stdout, r.explain()
    lines = r.stdout[:-1].split("\n")
    assert r.stdout.splitlines() == lines, "an output line holds a character that splitlines() breaks at"
    return lines


def test_translate_file_to_file(jobs: Jobs) -> None:
    r = jobs.result("file")
    assert r.returncode == 0 and r.stdout == "", r.explain()
    raw = (jobs.paths["ws"] / "out.txt").read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    out = raw.decode("utf-8")[:-1].split("\n")
    assert len(out) == N_INPUT, out
    assert raw.decode("utf-8").splitlines() == out, "an output line holds a Unicode line break"
    for i, line in enumerate(INPUT_LINES):
        if not line.strip():
            assert out[i] == "", f"line {i + 1}: an empty line must give an empty line"
    assert out[2] == out[3], "a CRLF line translates like the same line with LF"
    assert out[LONG_INDEX].strip(), "the long line was dropped"
    assert not [p.name for p in jobs.paths["ws"].iterdir() if p.name.startswith(".out.txt")], "temp file left"
    # the long line: one warning naming the line, translated in pieces
    warnings = [line for line in r.stderr_lines if line.startswith("mt: warning:")]
    assert len(warnings) == 1 and r.stderr_lines == warnings, r.explain()
    assert f"line {LONG_INDEX + 1}:" in warnings[0] and "pieces" in warnings[0]
    assert str(TINY_MAX_INPUT_TOKENS) in warnings[0]


def _file_output(jobs: Jobs) -> list[str]:
    assert jobs.result("file").returncode == 0
    return (jobs.paths["ws"] / "out.txt").read_text(encoding="utf-8")[:-1].split("\n")


def test_translate_stdin_to_stdout(jobs: Jobs) -> None:
    assert _lines(jobs.result("stdin")) == _file_output(jobs)


def test_translate_json(jobs: Jobs) -> None:
    rows = [json.loads(line) for line in _lines(jobs.result("json"))]
    assert [row["id"] for row in rows] == list(range(N_INPUT))
    assert [row["translation"] for row in rows] == _file_output(jobs)
    assert all(isinstance(row["score"], float) for row in rows)
    assert rows[1] == {"id": 1, "translation": "", "score": 0.0, "tokens": [], "token_scores": [], "alignment": []}
    assert rows[LONG_INDEX]["pieces"] >= 5
    for row in rows:  # the long line's pieces too: one </s> at the end, every target word aligned
        if row["translation"]:
            assert row["tokens"][-1] == "</s>" and len(row["token_scores"]) == len(row["tokens"])
            assert {t for _, t in row["alignment"]} == set(range(len(row["translation"].split())))


def test_translate_small_batches_keep_order(jobs: Jobs) -> None:
    out = _file_output(jobs)
    small = _lines(jobs.result("batch-tokens"))
    assert len(small) == N_INPUT
    assert [bool(s) for s in small] == [bool(s) for s in out]
    # one sentence per batch (no padding) gives the same words as the default batches, but for the
    # rounding noise of an untrained model: demand most lines to agree exactly
    assert sum(a == b for a, b in zip(small, out)) >= N_INPUT - 2, (small, out)


def test_translate_int8(jobs: Jobs) -> None:
    r = jobs.result("int8")
    rows = [json.loads(line) for line in _lines(r)]
    assert [row["id"] for row in rows] == list(range(N_INPUT))
    # the long-line warning and nothing else (no deprecation notices from torch's quantized types)
    assert len(r.stderr_lines) == 1 and "pieces" in r.stderr_lines[0], r.explain()
    full = [json.loads(line) for line in _lines(jobs.result("json"))]
    for i, line in enumerate(INPUT_LINES):
        assert bool(rows[i]["translation"]) == bool(full[i]["translation"]), f"line {i + 1}"
    # int8 weights are not float32: the scores move, but little, and most translations stay the same
    same = [i for i in range(N_INPUT) if rows[i]["translation"] == full[i]["translation"] and full[i]["translation"]]
    assert len(same) >= 4, (rows, full)
    drift = [abs(rows[i]["score"] - full[i]["score"]) / max(abs(full[i]["score"]), 1e-6) for i in same]
    assert max(drift) < 0.1 and any(d > 0 for d in drift), drift


def test_translate_bfloat16(jobs: Jobs) -> None:
    r = jobs.result("bf16")
    rows = [json.loads(line) for line in _lines(r)]
    assert [row["id"] for row in rows] == list(range(N_INPUT))
    # the long-line warning, and on a CPU without native bf16 one line saying it will be slow
    assert all(line.startswith("mt: warning:") for line in r.stderr_lines), r.explain()
    full = [json.loads(line) for line in _lines(jobs.result("json"))]
    for i, line in enumerate(INPUT_LINES):
        assert bool(rows[i]["translation"]) == bool(full[i]["translation"]), f"line {i + 1}"
    same = [i for i in range(N_INPUT) if rows[i]["translation"] == full[i]["translation"] and full[i]["translation"]]
    assert len(same) >= 4, (rows, full)
    assert all(rows[i]["score"] == pytest.approx(full[i]["score"], rel=0.1) for i in same)


def test_translate_n_best_moses_format(jobs: Jobs) -> None:
    rows = _lines(jobs.result("n-best"))
    parsed = [MOSES.match(row) for row in rows]
    assert all(parsed), rows
    ids = [int(m.group(1)) for m in parsed]
    assert ids == sorted(ids) and set(ids) == set(range(len(SHORT_LINES)))
    for i, line in enumerate(SHORT_LINES):
        entries = [m for m in parsed if int(m.group(1)) == i]
        if line:
            assert len(entries) == 3, rows
            scores = [float(m.group(3)) for m in entries]
            assert scores == sorted(scores, reverse=True)
        else:
            assert [(m.group(2), m.group(3)) for m in entries] == [("", "0.0000")]


def test_translate_n_best_alone_uses_beam(jobs: Jobs) -> None:
    """The demo recipe decodes greedily: --n-best 2 alone switches to a beam wide enough."""
    rows = [json.loads(line) for line in _lines(jobs.result("n-best-json"))]
    assert [row["id"] for row in rows] == list(range(len(SHORT_LINES)))
    for row, line in zip(rows, SHORT_LINES):
        assert len(row["nbest"]) == (2 if line else 1)
        assert row["nbest"][0]["translation"] == row["translation"]


def test_translate_n_best_alone_keeps_a_sampling_search(jobs: Jobs) -> None:
    """A run that samples: --n-best 3 alone gives 3 samples (they change with the seed), not a beam."""
    runs = [[json.loads(line) for line in _lines(jobs.result(f"n-best-sampling-{seed}"))] for seed in (1, 2)]
    for rows in runs:
        for row, line in zip(rows, SHORT_LINES):
            assert len(row["nbest"]) == (3 if line else 1)
    assert [r["nbest"] for r in runs[0]] != [r["nbest"] for r in runs[1]], "same n-best for two seeds: not sampling"


def test_translate_scores(jobs: Jobs) -> None:
    rows = _lines(jobs.result("scores"))
    assert len(rows) == len(SHORT_LINES)
    for row, line in zip(rows, SHORT_LINES):
        text, score = row.rsplit("\t", 1)
        assert re.fullmatch(r"-?\d+\.\d{4}", score) and float(score) <= 0.0, row
        if not line:
            assert (text, score) == ("", "0.0000")


def test_attention_plots(jobs: Jobs) -> None:
    """--attention-plot, with --checkpoint naming a checkpoint folder."""
    assert len(_lines(jobs.result("plot"))) == len(SHORT_LINES)
    plots = sorted((jobs.paths["ws"] / "plots").iterdir())
    expected = [f"{i + 1:06d}.png" for i, line in enumerate(SHORT_LINES) if line]
    assert [p.name for p in plots] == expected, "one PNG per (non-empty) sentence, named by its line"
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_streams_while_stdin_is_open(jobs: Jobs) -> None:
    s = jobs.result("stream")
    assert s["code"] == 0, s["stderr"]
    assert len(s["lines"]) == 3 and s["lines"][1] == b"\n" and s["lines"][0].endswith(b"\n"), s
    assert s["tail"] == b"" and s["stderr"] == "", s


def test_100k_lines_stream_with_bounded_memory(jobs: Jobs) -> None:
    s = jobs.result("100k")
    assert s["code"] == 0, s["stderr"]
    assert s["count"] == s["n"] and s["empty_ok"], "one output line per input line, in order"
    assert s["first"] is not None and s["first"] < s["n"] // 2, f"no output until {s['first']} lines were written"
    small = jobs.result("stream")  # the same command on 3 lines
    grown_mib = (s["rss_kib"] - small["rss_kib"]) / 1024
    assert grown_mib < 100, f"100k lines took {grown_mib:.0f} MiB more than 3 lines"


def test_reader_going_away_is_quiet(jobs: Jobs) -> None:
    s = jobs.result("pipe-closed")
    assert s["first"].endswith(b"\n")
    # click turns EPIPE into a silent exit 1 before cli/main.py sees it; 141 is the shell's SIGPIPE code
    assert s["code"] in (0, 1, 141, -13), s
    assert s["stderr"] == "", s["stderr"]


def test_average_then_translate_then_evaluate(jobs: Jobs) -> None:
    out = jobs.result("average")
    r = out["average"]
    assert r.returncode == 0, r.explain()
    assert "averaged 2 checkpoints" in r.stdout
    assert (jobs.paths["averaged"] / "averaged.safetensors").stat().st_size > 1000
    r = out["translate"]
    assert r.returncode == 0, r.explain()
    hyp = (jobs.paths["ws"] / "averaged.hyp").read_text(encoding="utf-8")
    assert hyp.count("\n") == N_INPUT
    r = out["evaluate"]
    assert r.returncode == 0, r.explain()
    report = json.loads(r.stdout)
    [system] = report["systems"]
    assert set(report["metrics"]) >= {"bleu", "chrf"}
    assert 0.0 <= system["scores"]["bleu"]["score"] <= 100.0
    assert "nrefs:1" in system["scores"]["bleu"]["signature"]


def test_resume_continues(jobs: Jobs) -> None:
    r = jobs.result("resume")
    assert r.returncode == 0, r.explain()
    run = jobs.paths["resumed"]
    assert "resumed from step_00000030" in r.stderr, r.explain()
    meta = json.loads((run / "meta.json").read_text(encoding="utf-8"))
    assert meta["step"] == 40
    assert (run / "checkpoints" / "step_00000040" / "model.safetensors").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["max_steps"] == 40
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40
