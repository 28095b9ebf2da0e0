"""The benchmark scripts run and print the JSON document benchmarks/README.md describes.

Tiny settings (a few sentences, one step, one thread): these tests time nothing and assert no
speed. They check that `make bench` would not break, and the properties the benchmarks rely on
that are not timing: every alternative of decode_ablations gives the shipped output, and the
reference beam search of translate_speed agrees with the batched one. Needs Multi30k in
../shared/data (as the benchmarks do); skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DATA = ROOT.parent / "shared" / "data" / "multi30k"

pytestmark = pytest.mark.skipif(not (DATA / "test_2016_flickr.en.gz").is_file(),
                                reason=f"Multi30k not found in {DATA}")


def bench(script: str, *args: str, device: bool = True) -> dict:
    """Run benchmarks/SCRIPT on the CPU with one thread; its JSON document (device=False: a script
    without --device, CPU only anyway)."""
    cpu = ["--device", "cpu"] if device else []
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--data", str(DATA), *cpu, "--threads", "1", *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    doc = json.loads(r.stdout)
    assert doc["benchmark"] == script.removesuffix(".py")
    assert doc["environment"]["torch_num_threads"] == 1 and doc["environment"]["device"] == "cpu"
    return doc


def test_translate_speed() -> None:
    doc = bench("translate_speed.py", "--batch-sizes", "2,8", "--sentences", "8", "--small-batch-sentences", "4",
                "--ref-sentences", "2", "--breakdown", "2")
    for name in ("transformer", "rnn"):
        m = doc["models"][name]
        runs = {(r["search"], r["batch_size"]): r for r in m["runs"]}
        assert set(runs) == {("greedy", 2), ("beam5", 2), ("greedy", 8), ("beam5", 8)}
        assert runs[("beam5", 2)]["sentences"] == 4 and runs[("beam5", 8)]["sentences"] == 8
        assert all(r["sentences_per_s"] > 0 and r["mean_output_tokens"] > 0 for r in runs.values())
        assert set(m["greedy_vs_beam"]) == {"2", "8"}
        # the naive reference follows the same rules as the batched search: the same output
        assert m["reference"]["same_output_as_batched"] == "2/2"
        assert m["speedup_vs_reference"]["batched"] == "beam5 batch 8"
        parts = m["beam_breakdown"][0]
        assert parts["batch_size"] == 2 and parts["parts"]["decode_step"]["calls"] > 0
        assert sum(p["share"] for p in parts["parts"].values()) == pytest.approx(1.0, abs=0.01)
        assert m["translator"]["sentences_per_s"] > 0


@pytest.mark.parametrize("option", [["--int8"], ["--dtype", "bfloat16"]], ids=["int8", "bfloat16"])
def test_translate_speed_int8_and_bfloat16(option: list[str]) -> None:
    if option[-1] == "bfloat16":
        from mt.device import cpu_has_native_bf16

        if cpu_has_native_bf16() is False:
            pytest.skip("this CPU emulates bf16: the run would take minutes")
    doc = bench("translate_speed.py", *option, "--models", "rnn", "--batch-sizes", "4", "--sentences", "4",
                "--small-batch-sentences", "4", "--ref-sentences", "0", "--breakdown", "none", "--no-translator")
    assert doc["setup"]["weights"].startswith(option[-1].removeprefix("--"))
    assert {r["search"] for r in doc["models"]["rnn"]["runs"]} == {"greedy", "beam5"}


def test_decode_ablations_alternatives_give_the_shipped_output() -> None:
    doc = bench("decode_ablations.py", "--quick", "--sentences", "4", "--sorting-sentences", "8", "--batch-size", "2")
    expected = {
        "transformer": {"shared_cross_attention_kv", "kv_cache_by_concatenation", "kv_reorder_fused", "encoder_once",
                        "drop_finished_sentences", "flat_topk", "inference_mode", "no_autograd"},
        "rnn": {"shared_cross_attention_kv", "encoder_once", "drop_finished_sentences", "flat_topk",
                "inference_mode", "no_autograd"},
    }
    for name, variants in expected.items():
        m = doc["models"][name]
        assert set(m["variants"]) == variants
        for variant, result in m["variants"].items():
            for search in ("beam", "greedy"):
                if search in result:
                    assert result[search]["same_output"] == "4/4", (name, variant, search)
        assert m["length_sorting"]["sentences"] == 8
        sorted_share = m["length_sorting"]["sorted_by_length"]["padding_share"]
        assert sorted_share <= m["length_sorting"]["input_order"]["padding_share"]


def test_train_speed_with_ablations() -> None:
    doc = bench("train_speed.py", "--quick", "--batch-tokens", "256", "--steps", "1", "--warmup-steps", "1",
                "--ablations", "--amp", "none,auto")
    for name in ("transformer", "rnn"):
        m = doc["models"][name]
        run, auto = m["runs"][0], m["runs"][1]
        assert run["amp"] == "none" and run["steps"] == 1
        # train.amp=auto's probe chose (bf16 only where this CPU multiplies bf16 natively)
        assert auto["amp"] == "auto" and auto["auto"]["used"] in ("none", "bf16") and auto["auto"]["reason"]
        assert run["target_tokens"] > 0 and run["target_tokens_per_s"] > 0
        assert 0 < run["target_tokens"] <= 256
        buckets = m["ablations"]["bucketing"]
        assert buckets["length_bucketed"]["padding_share"] <= buckets["random_order"]["padding_share"]
        assert set(m["ablations"]["adam"]) == {"fused", "foreach", "for_loop"}
        drop = m["ablations"]["dropout"]
        assert drop["256x512"]["torch_ms"] > 0 and drop["256x2048"]["mt_ms"] > 0


def test_precision_quality_on_a_trained_run(tiny_run: Path) -> None:
    from mt.device import cpu_has_native_bf16

    types = "int8,bfloat16" if cpu_has_native_bf16() is not False else "int8"
    doc = bench("precision_quality.py", str(tiny_run), "--types", types, device=False)
    (run,) = doc["runs"]
    assert run["sentences"] == 1000 and set(run["searches"]) == {"greedy", "beam5"}
    for entry in run["searches"].values():
        assert set(entry["against_float32"]) == set(types.split(","))
        for name, cmp in entry["against_float32"].items():
            assert 0 <= entry[name]["bleu"] <= 100
            assert cmp["bleu_change"] == pytest.approx(entry[name]["bleu"] - entry["float32"]["bleu"], abs=0.011)
            same, total = map(int, cmp["identical_lines"].split("/"))
            assert total == 1000 and same > 0


def test_serve_load(tiny_run: Path) -> None:
    doc = bench("serve_load.py", str(tiny_run), "--requests", "6", "--concurrency", "1,3", device=False)
    m = doc["mt_translate"]
    assert m["lines"] == 6 and m["sentences_per_second"] > 0 and m["in_process_output_equals_cli"]
    assert m["one_line_alone_ms_p50"] > 0
    assert [r["clients"] for r in doc["serve"]] == [1, 3]
    assert doc["serve"][0]["p50_over_one_line_alone"] > 0 and "p50_over_one_line_alone" not in doc["serve"][1]
    assert all(r["over_mt_translate"] > 0 for r in doc["serve"])
    for r in doc["serve"]:
        assert r["requests"] == 6 and r["errors"] == 0 and r["equal_to_mt_translate"] == 6, r
        assert r["sentences_per_second"] > 0 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        # 6 one-line requests: at most one per batch with one client, and every text counted once
        s = r["server"]
        assert 1 <= s["batches"] <= 6 and s["texts_per_batch"] == pytest.approx(6 / s["batches"], abs=0.051)
        assert 0 < s["decoding_share_of_wall"] <= 1
    assert doc["serve"][0]["server"]["batches"] == 6
    assert doc["server_exit_status_after_sigterm"] == 0


def test_ctranslate2_speed(tiny_run: Path) -> None:
    doc = bench("ctranslate2_speed.py", str(tiny_run), "--lines", "10", device=False)
    assert doc["lines"] == 10
    assert [r["setting"] for r in doc["results"]] == ["float32-greedy", "float32-beam5", "int8-greedy", "int8-beam5"]
    for r in doc["results"]:
        assert r["mt_sentences_per_second"] > 0 and r["ctranslate2_sentences_per_second"] > 0
        assert 0 <= r["identical_lines"] <= 10 and 0 <= r["bleu_ctranslate2"] <= 100


def test_hf_speed_quick() -> None:
    """A one-layer random Marian model decoded by transformers, mt and CTranslate2 (the latter, and
    the export to it, in processes of their own): the same outputs in float32, counted the same way;
    mt's and CTranslate2's int8 beside them."""
    pytest.importorskip("transformers")
    doc = bench("hf_speed.py", "--lines", "6", "--max-len", "5", "--layers", "1", "--d-model", "32", "--batch", "3",
                device=False)
    rows = {r["setting"]: r for r in doc["results"]}
    assert list(rows) == ["greedy", "beam4", "int8-greedy", "int8-beam4"]
    for name in ("greedy", "beam4"):
        assert set(rows[name]["target_tokens_per_second"]) == {"transformers", "mt", "ctranslate2"}
        assert rows[name]["identical_to_mt"] == {"transformers": 6, "ctranslate2": 6}
    for name in ("int8-greedy", "int8-beam4"):  # two int8 schemes: the outputs may differ, not their count
        assert set(rows[name]["target_tokens_per_second"]) == {"mt", "ctranslate2"}
        assert 0 <= rows[name]["identical_to_mt"]["ctranslate2"] <= 6
    assert all(min(r["target_tokens_per_second"].values()) > 0 for r in rows.values())
    assert doc["versions"]["ctranslate2"]


def test_unseen_characters_on_a_trained_run(tiny_run: Path) -> None:
    """The tiny run has no byte pieces: its source segmentation turns every unseen character into
    the unknown piece, and the counts say so; the model alone puts none of them out, the copy step
    nearly all (not those that the normalisation changes, like № to No)."""
    doc = bench("unseen_characters.py", str(tiny_run), "--threads", "1", device=False)
    (run,) = doc["runs"]
    assert run["byte_fallback"] is False and run["lines"] == 20
    assert len(run["outputs_model_alone"]) == len(run["outputs_copy_unseen"]) == 20
    assert run["unseen_characters_in_input"] > 50 and run["unknown_pieces_in_source"] > 10
    assert run["unseen_kept_by_segmentation"] == 0 and run["unseen_in_output_model_alone"] == 0
    assert run["unseen_in_output_copy_unseen"] >= 0.9 * run["unseen_characters_in_input"], run
    assert run["unk_marks_in_output_copy_unseen"] <= run["unk_marks_in_output_model_alone"]


def test_constraints_benchmark_quick(tiny_run: Path) -> None:
    """Every setting at every batch size, the constraints' coverage with and without, and the
    guard's count; the constrained search puts every constraint phrase in its output (the words are
    found detokenised where the tiny run's vocabulary can spell them)."""
    doc = bench("constraints.py", str(tiny_run), "--quick", "--sentences", "4", "--batch-sizes", "2,1",
                "--guard-sentences", "4")
    for bs in ("batch_2", "batch_1"):
        rows = doc["speed"][bs]
        assert set(rows) == {"plain", "guard", "no_repeat_ngram", "constraints"}
        assert rows["plain"]["cpu_time_vs_plain"] == 1.0 and all(r["ms_per_sentence"] > 0 for r in rows.values())
    quality = doc["quality"]
    assert quality["lines"] == 4 and quality["constraints"] == 6  # one, two, one, two words
    assert quality["with"]["constraint_words_in_output"] >= quality["without"]["constraint_words_in_output"]
    assert doc["guard"]["lines"] == 4 and doc["guard"]["fired"] >= 0 and doc["guard"]["max_repeat"] == 3


def test_data_scale(tmp_path: Path) -> None:
    """`make bench`'s data-path benchmark on 3000 pairs and two steps (its smallest real size is 0.1M)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "data_scale.py"), "--sizes", "3000", "--steps", "2",
           "--work", str(tmp_path), "--data", str(DATA), "--vocab-sentences", "6000"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    doc = json.loads(r.stdout)
    assert doc["benchmark"] == "data_scale"
    (size,) = doc["sizes"]
    assert size["pairs"] == 3000 and size["prepare"]["exit"] == 0 and size["prepare"]["pairs_per_s"] > 0
    for run in ("train_after_prepared", "resume_after"):
        assert size[run]["exit"] == 0 and 0 < size[run]["startup_s"] <= size[run]["first_step_s"]
    assert size["train_after_prepared"]["tokens_per_s"] > 0 and size["prepare"]["peak_rss_tree_mib"] > 0


def test_recipe_speed(tmp_path: Path) -> None:
    """The side-by-side training benchmark on the demo recipe, this checkout only, four steps."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "recipe_speed.py"), str(ROOT / "recipes" / "demo.yaml"),
           "--steps", "4", "--log-every", "2", "--repeats", "1", "--threads", "1", "--work", str(tmp_path)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    doc = json.loads(r.stdout)
    assert doc["benchmark"] == "recipe_speed" and doc["recipe"] == "recipes/demo.yaml" and doc["old"] is None
    (run,) = doc["runs"]["new"]
    assert len(run["windows"]) == 2 and run["tokens_per_s"] > 0 and doc["best_tokens_per_s"]["new"] == run["tokens_per_s"]
    assert "ratio" not in doc
    assert not (tmp_path / "run-new").exists()  # runs are removed; the prepared corpus stays for the next
    assert (tmp_path / "prepared-demo" / "manifest.json").is_file()
