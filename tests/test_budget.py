"""More quality for the compute: train.amp=auto (mt.train.precision), the precision a run chooses,
records and keeps on resume; train.average_last, the averaged checkpoint decoding uses where it
validates better; and benchmarks/quality_budget.py, which measures what a recipe reaches in M minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mt import MTError
from mt.config import config_from_dict
from mt.data.batching import collate
from mt.decode.translator import load_run
from mt.models import build_model
from mt.rundir import weights_file
from mt.train import precision
from mt.train.trainer import Trainer
from conftest import ROOT, TINY_TRAIN_SETTINGS
from test_train import _scripted, assert_same_weights, recipe, train_here


def _tiny_model() -> torch.nn.Module:
    cfg = config_from_dict(recipe())
    return build_model(cfg.model, 40, 40)


def _batches(n: int = 2) -> list:
    gen = torch.Generator().manual_seed(0)
    src = [torch.randint(4, 40, (7,), generator=gen).tolist() for _ in range(3)]
    tgt = [torch.randint(4, 40, (6,), generator=gen).tolist() for _ in range(3)]
    return [collate(src, tgt) for _ in range(n)]


def _stub_probe(rates: dict[str, float]):
    calls = []

    def probe(model, batches, device):
        calls.append(len(batches))
        return dict(rates)

    return probe, calls


@pytest.fixture()
def bf16_pays_here(monkeypatch):
    """A device with native bf16 and no size floor: the (stubbed) probe decides."""
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: True)
    monkeypatch.setattr(precision, "PROBE_MIN_PARAMETERS", 0)


@pytest.mark.parametrize("rates, expected", [({"none": 1000.0, "bf16": 1900.0}, "bf16"),
                                             ({"none": 1000.0, "bf16": 700.0}, "none")])
def test_auto_keeps_the_faster_precision_of_the_probe(bf16_pays_here, rates, expected) -> None:
    probe, calls = _stub_probe(rates)
    choice = precision.choose_amp(_tiny_model(), _batches(), torch.device("cpu"), probe=probe)
    assert choice.amp == expected and calls == [2]
    assert choice.rates == rates
    record = choice.record("auto")
    assert record["used"] == expected and record["probe_tokens_per_s"] == rates
    assert ("bf16" if expected == "bf16" else "float32") in choice.describe()


def test_auto_does_not_probe_without_native_bf16_or_for_a_small_model(monkeypatch) -> None:
    probe, calls = _stub_probe({"none": 1.0, "bf16": 100.0})
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: False)
    choice = precision.choose_amp(_tiny_model(), _batches(), torch.device("cpu"), probe=probe)
    assert choice.amp == "none" and "no native bf16" in choice.reason
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: True)
    choice = precision.choose_amp(_tiny_model(), _batches(), torch.device("cpu"), probe=probe)
    assert choice.amp == "none" and "parameters" in choice.reason
    assert calls == []


def test_the_real_probe_leaves_no_trace() -> None:
    """Timing both precisions changes neither weights nor gradients nor the random streams."""
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rates = precision.probe_rates(model, _batches(), torch.device("cpu"), rounds=1)
    assert set(rates) == {"none", "bf16"} and all(r > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_run_records_its_choice_and_a_resume_keeps_it_bitwise(tmp_path: Path, monkeypatch, bf16_pays_here) -> None:
    """The probe chose bf16 when the run started; on resume it would choose float32, but the run
    goes on in bf16 and ends bitwise where an uninterrupted run ends (with averaging on too)."""
    train = {"max_steps": 8, "save_every": 4, "valid_every": 4, "average_last": 2}
    monkeypatch.setattr(precision, "probe_rates", _stub_probe({"none": 1.0, "bf16": 2.0})[0])
    whole = tmp_path / "whole"
    train_here(whole, train=train)
    meta = json.loads((whole / "meta.json").read_text())
    assert meta["amp"]["setting"] == "auto" and meta["amp"]["used"] == "bf16"
    assert meta["amp"]["probe_tokens_per_s"] == {"none": 1.0, "bf16": 2.0}

    part = tmp_path / "part"
    train_here(part, train={**train, "max_steps": 4})
    monkeypatch.setattr(precision, "probe_rates", _stub_probe({"none": 2.0, "bf16": 1.0})[0])
    train_here(part, resume=True, train=train)
    assert json.loads((part / "meta.json").read_text())["amp"]["used"] == "bf16"
    for name in ("checkpoints/step_00000008/model.safetensors", "averaged.safetensors"):
        assert_same_weights(whole / name, part / name)
    # bf16 autocast really was used: a float32 run ends elsewhere
    fp32 = tmp_path / "fp32"
    train_here(fp32, train={**train, "amp": "none"})
    a, b = load_file(str(whole / "averaged.safetensors")), load_file(str(fp32 / "averaged.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert "amp" not in json.loads((fp32 / "meta.json").read_text())


def test_averaged_weights_are_the_mean_of_the_last_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_here(run, train={"max_steps": 12, "save_every": 4, "valid_every": 4, "keep_last": 3, "average_last": 3,
                           "amp": "none"})
    steps = [load_file(str(run / "checkpoints" / f"step_{s:08d}" / "model.safetensors")) for s in (4, 8, 12)]
    averaged = load_file(str(run / "averaged.safetensors"))
    assert averaged.keys() == steps[0].keys()
    for k in averaged:
        expected = sum(s[k].double() for s in steps) / 3
        # float32 rounding of the mean of three float32 values: within 2 ulp of float32
        torch.testing.assert_close(averaged[k].double(), expected, rtol=2.5e-7, atol=1e-12)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["averaged"]["checkpoints"] == ["step_00000004", "step_00000008", "step_00000012"]
    assert set(meta["averaged"]["valid"]) >= {"bleu", "chrf", "loss"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "averaged_valid" in r] == [12]


@pytest.mark.parametrize("averaged_bleu, uses_average", [(25.0, True), (15.0, False), (20.0, False)])
def test_decoding_uses_the_average_only_where_it_validated_better(tmp_path: Path, monkeypatch,
                                                                  averaged_bleu: float, uses_average: bool) -> None:
    _scripted(monkeypatch, "bleu", [10, 20, 12, averaged_bleu])  # steps 4, 8, 12, then the average
    run = tmp_path / "run"
    train_here(run, train={"max_steps": 12, "save_every": 4, "valid_every": 4, "average_last": 2, "amp": "none"})
    meta = json.loads((run / "meta.json").read_text())
    assert meta["averaged"]["chosen"] is uses_average and meta["best_step"] == 8
    chosen = "averaged.safetensors" if uses_average else "model.safetensors"
    assert meta["best_weights"] == chosen and weights_file(run, "best") == run / chosen
    assert weights_file(run, "last") == run / "checkpoints" / "step_00000012" / "model.safetensors"
    loaded = load_run(run).model.state_dict()
    expected = load_file(str(run / chosen))
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_average_last_needs_the_checkpoints_kept() -> None:
    with pytest.raises(MTError, match="keep_last >= 5"):
        config_from_dict(recipe(train={"average_last": 5, "keep_last": 2}))
    with pytest.raises(MTError, match="must not be negative"):
        config_from_dict(recipe(train={"average_last": -1}))


def test_quality_budget_benchmark_smoke(tmp_path: Path) -> None:
    """Two seeds of the tiny demo run for seven seconds each (vocabulary and data included): every model is scored on both sets."""
    sets = [s for s in TINY_TRAIN_SETTINGS if not s.startswith(("train.max_steps", "train.valid_every"))]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality_budget.py"), "recipes/demo.yaml", "--minutes", "0.12",
           "--seeds", "2", "--average", "2", "--beam", "2", "--threads", "1", "--work", str(tmp_path / "w"),
           *[a for s in [*sets, "train.save_every=3", "train.valid_every=3", "train.log_every=3"] for a in ("--set", s)]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["benchmark"] == "quality_budget" and doc["minutes"] == 0.12 and len(doc["runs"]) == 2
    for run in doc["runs"]:
        assert run["steps"] > 0 and run["target_tokens_per_s"] > 0
        assert run["amp"]["setting"] == "auto" and run["amp"]["used"] == "none"  # a tiny model keeps float32
        assert run["valid_curve"] and run["valid_curve"][-1]["step"] == run["steps"]
        assert run["best_weights"] in ("model.safetensors", "averaged.safetensors")
        assert set(run["models"]) == {"last", "best", "averaged"}
        for model in run["models"].values():
            assert set(model) == {"valid", "test"}
            for result in model.values():
                assert result["sentences"] == 20 and 0 <= result["bleu"] <= 100 and 0 <= result["chrf"] <= 100
                assert "case:mixed" in result["bleu_signature"] and "tok:13a" in result["bleu_signature"]
                assert "case:lc" in result["bleu_lowercased_signature"]
                assert result["bleu_lowercased"] >= result["bleu"] - 1e-9  # lowercasing only merges words
    assert set(doc["ensemble"]) == {"valid", "test"}
    # --no-train scores the same runs again, unchanged, without training (no training seconds known)
    again = subprocess.run(cmd + ["--no-train"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads(again.stdout)
    assert [r["steps"] for r in rescored["runs"]] == [r["steps"] for r in doc["runs"]]
    assert all(r["train_seconds"] is None for r in rescored["runs"])

    def scores(d: dict) -> list:  # the same models, the same translations: the same scores (not speed)
        return [{m: {k: {f: v for f, v in r.items() if f != "sentences_per_s"} for k, r in by_set.items()}
                 for m, by_set in run["models"].items()} for run in d["runs"]]

    assert scores(rescored) == scores(doc)
    missing = subprocess.run(cmd + ["--no-train", "--seeds", "3"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert missing.returncode != 0 and "seed3 is not a trained run" in missing.stderr


# ----------------------------------------------------------------------------------------------
# subword regularization: sampled segmentations in the prepared corpus, one drawn per epoch


def _sampling_cfg(folder: Path, alpha: float, k: int = 4, workers: int = 1, model_type: str = "unigram"):
    from mt.data import synthetic
    from test_prepare import tiny_cfg, write_pair

    src, tgt = write_pair(folder, "a", synthetic.generate(400, seed=8))
    return tiny_cfg(folder, {"train_src": str(src), "train_tgt": str(tgt), "workers": workers, "max_ratio": 0,
                             "dedup": False},
                    {"size": 120, "model_type": model_type, "sampling_alpha": alpha, "sampling_segmentations": k})


def test_sampled_segmentations_decode_back_to_the_pair_and_differ(tmp_path: Path) -> None:
    from mt.data.dataset import PreparedData
    from mt.data.prepare import prepare
    from mt.data.vocab import Vocab

    plain = prepare(_sampling_cfg(tmp_path, 0.0), tmp_path / "plain", log=lambda m: None)
    sampled = prepare(_sampling_cfg(tmp_path, 0.2), tmp_path / "sampled", log=lambda m: None)
    assert sampled["pairs"] == plain["pairs"] and sampled["segmentations"] == 4 and plain["segmentations"] == 1
    a, b = PreparedData.open(tmp_path / "plain"), PreparedData.open(tmp_path / "sampled")
    assert len(b.src) == 4 * len(a.src)
    vocab = Vocab(b.vocab_files()[0])
    differ = 0
    for i in range(len(a.src)):
        text = (vocab.decode(a.src[i].tolist()), vocab.decode(a.tgt[i].tolist()))
        rows = [(b.src[4 * i + c].tolist(), b.tgt[4 * i + c].tolist()) for c in range(4)]
        assert all((vocab.decode(s), vocab.decode(t)) == text for s, t in rows)
        differ += len({tuple(s) for s, _ in rows}) > 1
    assert differ > len(a.src) // 2, differ  # most pairs get more than one segmentation
    assert sampled["tokens"]["src"] > 4 * plain["tokens"]["src"]  # sampled segmentations are longer


def test_sampled_corpus_is_the_same_for_any_number_of_workers(tmp_path: Path, monkeypatch) -> None:
    from mt.data.prepare import prepare

    monkeypatch.setattr("mt.data.prepare.POOL_MIN_BYTES", 0)
    monkeypatch.setattr("mt.data.prepare.CHUNK_PAIRS", 100)
    one = prepare(_sampling_cfg(tmp_path, 0.2, workers=1), tmp_path / "one", log=lambda m: None)
    two = prepare(_sampling_cfg(tmp_path, 0.2, workers=2), tmp_path / "two", log=lambda m: None)
    assert one["files"] == two["files"] and two["workers"] == 2


def test_each_epoch_draws_one_segmentation_per_pair(tmp_path: Path) -> None:
    from mt.data.batching import TokenBatcher
    from mt.data.dataset import PreparedData
    from mt.data.prepare import prepare

    prepare(_sampling_cfg(tmp_path, 0.2), tmp_path / "p", log=lambda m: None)
    prep = PreparedData.open(tmp_path / "p")
    batcher = TokenBatcher(prep.src, prep.tgt, 200, seed=3, segmentations=4)
    drawn = []
    for epoch in (0, 1):
        rows = np.concatenate(batcher.epoch_batches(epoch))
        assert sorted(rows // 4) == list(range(prep.manifest["pairs"]))  # every pair once
        drawn.append(dict(zip(rows // 4, rows % 4)))
    assert sum(drawn[0][i] != drawn[1][i] for i in drawn[0]) > len(drawn[0]) // 2
    again = TokenBatcher(prep.src, prep.tgt, 200, seed=3, segmentations=4)
    assert all(np.array_equal(x, y) for x, y in zip(batcher.epoch_batches(1), again.epoch_batches(1)))
    batch = batcher.collate(batcher.epoch_batches(1)[0])
    assert batch.ntokens == sum(len(prep.tgt[int(r)]) + 1 for r in batcher.epoch_batches(1)[0])


def test_resume_is_bitwise_with_sampling_and_averaging(tmp_path: Path) -> None:
    vocab = {"sampling_alpha": 0.2, "sampling_segmentations": 3, "model_type": "unigram"}
    train = {"max_steps": 8, "save_every": 4, "valid_every": 4, "average_last": 2, "amp": "none"}
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_here(whole, vocab=vocab, train=train)
    assert json.loads((whole / "prepared" / "manifest.json").read_text())["segmentations"] == 3
    train_here(part, vocab=vocab, train={**train, "max_steps": 4})
    train_here(part, resume=True, vocab=vocab, train=train)
    for name in ("checkpoints/step_00000008/model.safetensors", "averaged.safetensors", "model.safetensors"):
        assert_same_weights(whole / name, part / name)


def test_a_recipe_with_sampling_refuses_a_corpus_prepared_without(tmp_path: Path) -> None:
    from mt.data.dataset import PreparedData
    from mt.data.prepare import check_prepared, prepare

    prepare(_sampling_cfg(tmp_path, 0.0), tmp_path / "p", log=lambda m: None)
    with pytest.raises(MTError, match="sampling_alpha"):
        check_prepared(PreparedData.open(tmp_path / "p"), _sampling_cfg(tmp_path, 0.2))
    for model_type in ("bpe", "word"):
        with pytest.raises(MTError, match="needs vocab.model_type unigram"):
            _sampling_cfg(tmp_path, 0.2, model_type=model_type)
