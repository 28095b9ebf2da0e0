"""`mt evaluate` end to end: the installed command in a subprocess, files in tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from mt.metrics import paired_bootstrap

REFS = [
    "The cat sat on the red mat this morning.",
    "There is a big house near the old oak tree.",
    "She reads a long book every night before bed.",
    "We will travel to the coast next summer.",
]
WEAK = [
    "The cat sat on mat.",
    "There is house near a tree.",
    "She reads book at night.",
    "We travel to coast in summer.",
]
GOOD = [
    "The cat sat on the red mat this morning.",
    "There is a big house near the old tree.",
    "She reads a long book every night before bed.",
    "We will travel to the sea coast next summer.",
]


def run_mt(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "mt.cli.main", "evaluate", *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=120,
    )


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path.name


@pytest.fixture
def files(tmp_path: Path) -> Path:
    write(tmp_path / "ref.txt", REFS)
    write(tmp_path / "weak.txt", WEAK)
    write(tmp_path / "good.txt", GOOD)
    return tmp_path


def test_json_matches_sacrebleu(files: Path) -> None:
    r = run_mt("--hyp", "weak.txt", "--ref", "ref.txt", "--metrics", "bleu,chrf,ter", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["refs"] == ["ref.txt"] and out["metrics"] == ["bleu", "chrf", "ter"]
    [system] = out["systems"]
    assert system["name"] == "weak.txt"
    scores = system["scores"]
    assert scores["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(WEAK, [REFS]).score)
    assert scores["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(WEAK, [REFS]).score)
    assert scores["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(WEAK, [REFS]).score)
    assert scores["bleu"]["name"] == "BLEU"
    assert scores["bleu"]["signature"].startswith("nrefs:1|")
    assert f"version:{sacrebleu.__version__}" in scores["chrf"]["signature"]


def test_stdin_hypothesis_and_two_references(files: Path) -> None:
    write(files / "ref2.txt", GOOD)
    r = run_mt("--hyp", "-", "--ref", "ref.txt", "--ref", "ref2.txt", "--json", cwd=files, stdin="\n".join(WEAK) + "\n")
    assert r.returncode == 0, r.stderr
    [system] = json.loads(r.stdout)["systems"]
    assert system["name"] == "<stdin>"
    assert list(system["scores"]) == ["bleu", "chrf"]  # the default metrics
    assert system["scores"]["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(WEAK, [REFS, GOOD]).score)
    assert "nrefs:2" in system["scores"]["bleu"]["signature"]


def test_plain_table_when_not_a_tty(files: Path) -> None:
    r = run_mt("--hyp", "weak.txt", "--ref", "ref.txt", "--precision", "3", cwd=files)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["system", "BLEU", "chrF2"]
    name, bleu, chrf = lines[1].split("\t")
    assert name == "weak.txt"
    # --precision 3: three decimals, within half a unit of the last one of sacrebleu's score (a rounded
    # value compared as a string is an exact comparison in disguise; 1e-9 for the decimal representation)
    want = {"bleu": sacrebleu.corpus_bleu(WEAK, [REFS]).score, "chrf": sacrebleu.corpus_chrf(WEAK, [REFS]).score}
    for cell, score in ((bleu, want["bleu"]), (chrf, want["chrf"])):
        assert re.fullmatch(r"\d+\.\d{3}", cell), cell
        assert float(cell) == pytest.approx(score, abs=0.0005 + 1e-9), cell
    assert any(line.startswith("BLEU signature: nrefs:1|") for line in lines)


def test_paired_bootstrap_prints_both_systems(files: Path) -> None:
    r = run_mt("--hyp", "weak.txt", "--hyp", "good.txt", "--ref", "ref.txt", "--paired-bs", "--bs-samples", "200", cwd=files)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    assert [row[0] for row in rows] == ["system", "baseline: weak.txt", "good.txt"]
    assert "p=" not in rows[1][1] and "p=" in rows[2][1]
    assert "bs:200|seed:12345" in r.stdout


def test_paired_bootstrap_json(files: Path) -> None:
    r = run_mt("--hyp", "weak.txt", "--hyp", "good.txt", "--ref", "ref.txt", "--paired-bs", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["paired_bs"] == {"baseline": "weak.txt", "samples": 1000, "seed": 12345}
    weak, good = out["systems"]
    assert weak["scores"]["bleu"]["bootstrap"]["p_value"] is None
    # the p-value is the one of the test itself (baseline weak.txt, 1000 samples, seed 12345)
    want = paired_bootstrap({"weak.txt": WEAK, "good.txt": GOOD}, [REFS], metrics=("bleu", "chrf"))["good.txt"]
    assert good["scores"]["bleu"]["bootstrap"]["p_value"] == pytest.approx(want["bleu"].p_value)
    assert good["scores"]["chrf"]["bootstrap"]["p_value"] == pytest.approx(want["chrf"].p_value)
    assert good["scores"]["bleu"]["bootstrap"]["mean"] == pytest.approx(want["bleu"].mean, abs=0.01)
    assert good["scores"]["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(GOOD, [REFS]).score)


BAD_CASES = {
    "missing file": (["--hyp", "nope.txt", "--ref", "ref.txt"], "nope.txt: no such file"),
    "mismatched lines": (["--hyp", "short.txt", "--ref", "ref.txt"], "short.txt has 3 lines but ref.txt has 4"),
    "invalid utf-8": (["--hyp", "latin1.txt", "--ref", "ref.txt"], "latin1.txt:2: invalid UTF-8"),
    "empty file": (["--hyp", "empty.txt", "--ref", "ref.txt"], "empty.txt: empty file"),
    "unknown metric": (["--hyp", "weak.txt", "--ref", "ref.txt", "--metrics", "bleu,meteor"], "unknown metric 'meteor'"),
    "unknown tokenizer": (["--hyp", "weak.txt", "--ref", "ref.txt", "--tokenize", "moses"], "unknown tokenizer 'moses'"),
    "paired with one system": (["--hyp", "weak.txt", "--ref", "ref.txt", "--paired-bs"], "at least two --hyp"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """Every bad case at once (each run pays the start-up of the whole CLI): case -> (rc, stdout, stderr)."""
    d = tmp_path_factory.mktemp("bad")
    write(d / "ref.txt", REFS)
    write(d / "weak.txt", WEAK)
    write(d / "short.txt", WEAK[:3])
    (d / "latin1.txt").write_bytes("ok\nca f\xe9\nx\ny\n".encode("latin-1"))
    (d / "empty.txt").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "MT_DEBUG"}
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-m", "mt.cli.main", "evaluate", *args],
            cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for case, (args, _) in BAD_CASES.items()
    }
    results = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[case] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_on_stderr(bad_runs: dict[str, tuple[int, str, str]], case: str) -> None:
    rc, out, err = bad_runs[case]
    assert rc != 0
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mt: error:") and BAD_CASES[case][1] in lines[0]
    assert "Traceback" not in err


def test_help_lists_the_options(tmp_path: Path) -> None:
    r = run_mt("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for option in ("--hyp", "--ref", "--metrics", "--json", "--paired-bs", "--bs-samples", "--tokenize", "--lowercase", "--precision"):
        assert option in r.stdout
