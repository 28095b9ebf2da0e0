"""`mt export --format ctranslate2`: the CTranslate2 model computes what mt's model computes.

- every architecture option (pre/post norm, sinusoidal/learned positions, relu/gelu, shared or
  separate embeddings, tied or untied output, joint or separate vocabularies): CTranslate2's token
  log-probabilities of a forced target equal mt's teacher-forced ones (random weights, layer norms
  included, so no parameter can hide behind its initial value);
- on a small trained run: CTranslate2 float32 greedy and beam 5 output against mt's, line by line;
- the export loads with compute_type int8, and exports with int8 weights;
- what cannot be exported (RNN runs, options the spec lacks) is one clear error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import assert_clean_failure, copy_run, run_mt
from mt import MTError
from mt.data import synthetic
from mt.checkpoint import save_weights
from mt.config import TransformerConfig, config_from_dict, load_config, save_config, to_dict
from mt.data.batching import source_tensor
from mt.interop.ctranslate2 import check_exportable, export_ctranslate2
from mt.models import build_model
from mt.models.base import BOS_ID, EOS_ID
from mt.decode.search import build_search
from mt.decode.translator import Translator, load_run


def random_run(dest: Path, tiny_run: Path, model: dict, joint: bool = True, seed: int = 0) -> Path:
    """A run directory with the tiny run's SentencePiece model and random weights (layer norms too)."""
    data = to_dict(load_config(tiny_run / "config.yaml"))
    data["model"] = {"arch": model.get("arch", "transformer"), **model}
    data["vocab"]["joint"] = joint
    cfg = config_from_dict(data)
    dest.mkdir(parents=True)
    save_config(cfg, dest / "config.yaml")
    for name in (["spm.model"] if joint else ["spm.src.model", "spm.tgt.model"]):
        shutil.copyfile(tiny_run / "spm.model", dest / name)
    vocab = spm.SentencePieceProcessor(str(tiny_run / "spm.model")).GetPieceSize()
    torch.manual_seed(seed)
    net = build_model(cfg.model, vocab, vocab)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
            elif isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
        if getattr(net, "src_embed", None) is not None and net.src_embed.positions is not None:
            net.src_embed.positions.weight.normal_(0.0, 0.5)
            net.tgt_embed.positions.weight.normal_(0.0, 0.5)
    save_weights(net, dest / "model.safetensors")
    return dest


PAIRS = synthetic.generate(12, seed=5, max_clauses=2)

VARIANTS = {
    "pre-sinusoidal-relu-shared-tied": dict(norm="pre", positions="sinusoidal", activation="relu",
                                            share_embeddings=True, tie_output=True),
    "post-learned-gelu-separate-untied": dict(norm="post", positions="learned", activation="gelu",
                                              share_embeddings=False, tie_output=False, joint=False),
    "post-sinusoidal-separate-tied": dict(norm="post", positions="sinusoidal", share_embeddings=False,
                                          tie_output=True),
    "pre-learned-gelu-3x1-layers": dict(norm="pre", positions="learned", activation="gelu", enc_layers=3,
                                        dec_layers=1, heads=4, share_embeddings=False, tie_output=False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ctranslate2_scores_equal_mt(variant: str, tiny_run: Path, tmp_path: Path) -> None:
    options = dict(VARIANTS[variant])
    joint = options.pop("joint", True)
    model = {"d_model": 32, "heads": 2, "enc_layers": 2, "dec_layers": 2, "ff_dim": 48, "max_positions": 128, **options}
    run_dir = random_run(tmp_path / "run", tiny_run, model, joint)
    out = export_ctranslate2(run_dir, tmp_path / "ct2")
    names = {p.name for p in out.iterdir()}
    # CTranslate2 writes one shared_vocabulary.json when both sides' pieces are the same (here: always)
    assert {"config.json", "model.bin", "mt_export.json", "shared_vocabulary.json"} <= names
    assert ({"spm.model"} if joint else {"source.spm.model", "target.spm.model"}) <= names

    run = load_run(run_dir)
    src = [run.src_vocab.encode(s) for s, _ in PAIRS]
    tgt = [run.tgt_vocab.encode(t) for _, t in PAIRS]
    # mt: teacher-forced log-probabilities of each target token and of eos
    s, lengths = source_tensor(src)
    width = max(map(len, tgt)) + 1
    tgt_in = torch.zeros((len(tgt), width), dtype=torch.long)
    for i, t in enumerate(tgt):
        tgt_in[i, : len(t) + 1] = torch.tensor([BOS_ID] + t)
    with torch.no_grad():
        lp = run.model(s, lengths, tgt_in).log_softmax(-1)
    expected = [lp[i, torch.arange(len(t) + 1), torch.tensor(t + [EOS_ID])].numpy() for i, t in enumerate(tgt)]

    translator = ctranslate2.Translator(str(out), device="cpu", compute_type="float32", intra_threads=1)
    got = translator.score_batch([run.src_vocab.pieces(x) for x in src], [run.tgt_vocab.pieces(y) for y in tgt])
    for e, g in zip(expected, got):
        np.testing.assert_allclose(np.array(g.log_probs), e, atol=2e-4, rtol=0)


# -- agreement on a trained run --------------------------------------------------------------------
LINES = [s for s, _ in synthetic.generate(200, seed=777, max_clauses=1)]


def agreement(run_dir: Path, out: Path, decode: dict, ct2: dict, compute_type: str = "float32") -> tuple[float, list]:
    """Share of LINES on which CTranslate2 and mt give the same translation; the differing pairs.
    CTranslate2 gets mt's maximum length (a * source length + b) per line."""
    run = load_run(run_dir)
    d = replace(run.config.decode, **{"max_repeat": 0, **decode})  # CTranslate2 has no loop guard
    mine = [t.text for t in Translator(run.model, run.src_vocab, run.tgt_vocab, build_search(d)).translate(LINES)]
    sp = spm.SentencePieceProcessor(str(out / "spm.model"))
    translator = ctranslate2.Translator(str(out), device="cpu", compute_type=compute_type, intra_threads=1)
    theirs = []
    for line in LINES:
        pieces = sp.encode(line, out_type=str)
        max_len = int((len(pieces) + 1) * d.max_len_a + d.max_len_b)
        result = translator.translate_batch([pieces], max_decoding_length=max_len, **ct2)
        theirs.append(sp.decode(result[0].hypotheses[0]))
    differ = [(a, b) for a, b in zip(mine, theirs) if a != b]
    return 1 - len(differ) / len(LINES), differ


@pytest.fixture(scope="module")
def exported(small_transformer_run, tmp_path_factory) -> Path:
    return export_ctranslate2(small_transformer_run.path, tmp_path_factory.mktemp("ct2") / "small")


def test_greedy_output_agrees(small_transformer_run, exported: Path) -> None:
    share, differ = agreement(small_transformer_run.path, exported, {"search": "greedy"}, {"beam_size": 1})
    print(f"\nCTranslate2 float32 greedy = mt --greedy on {share:.1%} of {len(LINES)} lines")
    assert share >= 0.99, differ[:5]


def test_beam5_output_agrees(small_transformer_run, exported: Path) -> None:
    # CTranslate2's length penalty is mt's d2l form (score / length ** alpha, eos counted)
    share, differ = agreement(small_transformer_run.path, exported,
                              {"search": "beam", "beam": 5, "len_penalty": "d2l", "alpha": 0.6},
                              {"beam_size": 5, "length_penalty": 0.6})
    print(f"\nCTranslate2 float32 beam 5 = mt --beam 5 --len-penalty d2l on {share:.1%} of {len(LINES)} lines")
    assert share >= 0.97, differ[:5]


def test_loads_and_translates_in_int8(small_transformer_run, exported: Path, tmp_path: Path) -> None:
    share, _ = agreement(small_transformer_run.path, exported, {"search": "greedy"}, {"beam_size": 1}, "int8")
    translator = ctranslate2.Translator(str(exported), device="cpu", compute_type="int8")
    assert translator.compute_type.startswith("int8")  # int8_float32 on a CPU
    print(f"\nCTranslate2 int8 greedy = mt float32 --greedy on {share:.1%} of {len(LINES)} lines")
    assert share >= 0.8  # int8 rounds the weights: most lines stay the same
    # int8 weights in the exported file itself
    small = export_ctranslate2(small_transformer_run.path, tmp_path / "int8", quantization="int8")
    assert (small / "model.bin").stat().st_size < 0.5 * (exported / "model.bin").stat().st_size
    info = json.loads((small / "mt_export.json").read_text(encoding="utf-8"))
    assert info["quantization"] == "int8"
    assert ctranslate2.Translator(str(small)).translate_batch([["▁a"]], max_decoding_length=20)[0].hypotheses


# -- errors ------------------------------------------------------------------------------------------
def test_cli_export_and_its_errors(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct2"
    r = run_mt("export", "-m", tiny_run, "--format", "ctranslate2", "--out", out)
    assert r.returncode == 0, r.explain()
    assert "wrote" in r.stderr and "GNMT length penalty" in r.stderr  # the demo recipe decodes with gnmt
    info = json.loads((out / "mt_export.json").read_text(encoding="utf-8"))
    assert info["translate_batch"]["max_decoding_length"] == 127 and info["source_language"] == "en"
    assert ctranslate2.Translator(str(out)).translate_batch([["▁a"]], max_decoding_length=20)[0].hypotheses
    before = sorted(p.name for p in out.iterdir())
    assert_clean_failure(run_mt("export", "-m", tiny_run, "--format", "ctranslate2", "--out", out), "already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == before
    assert_clean_failure(run_mt("export", "-m", tiny_run, "--format", "onnx", "--out", tmp_path / "x"),
                         "unknown export format 'onnx'")
    assert_clean_failure(run_mt("export", "-m", tmp_path / "nope", "--format", "ctranslate2", "--out", tmp_path / "x"),
                         "no such run directory")
    rnn = random_run(tmp_path / "rnn", tiny_run, {"arch": "rnn", "emb_dim": 16, "hidden": 16})
    assert_clean_failure(run_mt("export", "-m", rnn, "--format", "ctranslate2", "--out", tmp_path / "x"),
                         "CTranslate2 has no RNN")
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]
    r = run_mt("export", "-m", tiny_run, "--format", "ctranslate2", "--out", out, "--force", "-q", "int8")
    assert r.returncode == 0 and json.loads((out / "mt_export.json").read_text())["quantization"] == "int8", r.explain()


def test_force_replaces_only_an_earlier_export(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "runs" / "run")
    files = sorted(p.name for p in run.iterdir())
    # --out naming the run directory or a folder that holds it: refused, even with --force
    for out in (run, run.parent, tmp_path):
        assert_clean_failure(run_mt("export", "-m", run, "--format", "ctranslate2", "--out", out, "--force"),
                             "is the run directory")
        assert sorted(p.name for p in run.iterdir()) == files
    # a folder that is not an export: refused, left as it was
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine\n")
    assert_clean_failure(run_mt("export", "-m", run, "--format", "ctranslate2", "--out", other, "--force"),
                         "no mt_export.json")
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    # an earlier export is replaced whole; nothing temporary stays behind
    out = tmp_path / "ct2"
    assert run_mt("export", "-m", run, "--format", "ctranslate2", "--out", out).returncode == 0
    (out / "stale.txt").write_text("from the earlier export\n")
    r = run_mt("export", "-m", run, "--format", "ctranslate2", "--out", out, "--force")
    assert r.returncode == 0, r.explain()
    assert not (out / "stale.txt").exists() and (out / "mt_export.json").is_file() and (out / "model.bin").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ct2.")]


def test_an_option_the_spec_lacks_is_named() -> None:
    # a Transformer option mt might gain (here: rotary positions) that the exporter does not map
    Rotary = dataclasses.make_dataclass("Rotary", [("rotary", bool, True)], bases=(TransformerConfig,), frozen=True)
    with pytest.raises(MTError, match=r"model\.rotary=True: CTranslate2's TransformerSpec has no equivalent"):
        check_exportable(Rotary())
    check_exportable(TransformerConfig(norm="post", positions="learned", activation="gelu"))
