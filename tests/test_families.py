"""benchmarks/families.py: the book's model families trained on one budget, one table (smoke test on
two tiny recipes of the generated pair: a plain GRU encoder-decoder and one with Bahdanau attention)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT


def _recipe(folder: Path, name: str, attention: str) -> Path:
    recipe = {
        "name": name,
        "data": {"corpus": "synthetic", "synthetic_train": 600, "synthetic_valid": 20, "synthetic_test": 30,
                 "synthetic_max_clauses": 2},
        "vocab": {"size": 200, "byte_fallback": False},
        "model": {"arch": "rnn", "cell": "gru", "attention": attention, "emb_dim": 32, "hidden": 32,
                  "enc_layers": 1, "dec_layers": 1, "input_feeding": False},
        "train": {"batch_tokens": 800, "max_steps": 100000, "valid_every": 5, "log_every": 5, "lr": 0.003},
        "decode": {"search": "beam", "beam": 5, "max_len_b": 10},
    }
    path = folder / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_families_benchmark_smoke(tmp_path: Path) -> None:
    recipes = [_recipe(tmp_path, "gru", "none"), _recipe(tmp_path, "bahdanau", "bahdanau")]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "families.py"), "--minutes", "0.1", "--threads", "1",
           "--recipes", ",".join(map(str, recipes)), "--work", str(tmp_path / "w"), "--plots", str(tmp_path / "plots")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["benchmark"] == "families" and list(doc["families"]) == ["gru", "bahdanau"]
    for name, row in doc["families"].items():
        assert row["parameters"] > 0 and row["steps"] > 0 and row["target_tokens_per_s"] > 0
        assert row["best_valid_bleu"] is not None
        for search in ("beam5", "greedy"):
            assert 0 <= row[search]["bleu"] <= 100 and row[search]["sentences_per_s"] > 0
            assert "tok:13a" in row[search]["bleu_signature"]
        buckets = row["test_bleu_by_source_words"]
        assert sum(b["sentences"] for b in buckets.values()) == 30
        lows = [int(b.split("-")[0].rstrip("+")) for b in buckets]
        assert lows == sorted(lows)
    # a heatmap for the model with attention only
    assert "attention_plot" not in doc["families"]["gru"]
    plot = Path(doc["families"]["bahdanau"]["attention_plot"])
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(doc["bleu_by_length_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["trained_here"] is True

    # --no-train scores the runs already in --work: nothing retrained, the same weights give the same table
    weights = tmp_path / "w" / "gru" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = subprocess.run(cmd[:-2] + ["--no-train"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    doc2 = json.loads(again.stdout)
    assert doc2["trained_here"] is False and weights.stat().st_mtime_ns == before
    for name, row in doc2["families"].items():
        assert row["steps"] == doc["families"][name]["steps"]
        assert row["best_valid_bleu"] == doc["families"][name]["best_valid_bleu"]
        assert row["beam5"]["bleu"] == doc["families"][name]["beam5"]["bleu"]
    # and refuses a folder that holds no trained run
    missing = subprocess.run(cmd[:-4] + ["--work", str(tmp_path / "none"), "--no-train"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "is not a trained run" in missing.stderr
