"""Marian models from Hugging Face `transformers` into mt and back (mt.interop.huggingface).

Offline: every model here is built with transformers from a random MarianConfig and saved with
save_pretrained, beside small SentencePiece models trained on the synthetic pair; nothing is
downloaded. A random Marian model repeats itself forever; to give it sentences that end, its </s>
output row points along the decoder's position code of a chosen step and the decoder's own layers
write little into the residual stream, so that position (and the source, through cross-attention)
decides when a sentence ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import torch

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from mt.data import synthetic  # noqa: E402
from mt.data.batching import source_tensor  # noqa: E402
from mt.decode.scorer import Scorer  # noqa: E402
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty  # noqa: E402
from mt.decode.translator import load_run  # noqa: E402
from mt.interop.huggingface import import_huggingface  # noqa: E402

from conftest import assert_clean_failure, run_mt  # noqa: E402

LIMIT = 40  # new tokens transformers may generate; every compared output ends before it
SOURCES = [a for a, _ in synthetic.generate(120, seed=9, max_clauses=2)]


def _spm_models(dest: Path) -> tuple[list[str], list[str]]:
    """source.spm and target.spm trained as Marian's are (SentencePiece's own ids), and the ordinary
    pieces of each side."""
    pairs = synthetic.generate(400, seed=1, max_clauses=2)
    sides = []
    for name, lines in (("source", [a for a, _ in pairs]), ("target", [b for _, b in pairs])):
        spm.SentencePieceTrainer.Train(sentence_iterator=iter(lines), model_prefix=str(dest / name), vocab_size=60,
                                       minloglevel=2, hard_vocab_limit=False, num_threads=1)
        (dest / f"{name}.model").rename(dest / f"{name}.spm")
        (dest / f"{name}.vocab").unlink()
        sp = spm.SentencePieceProcessor(model_file=str(dest / f"{name}.spm"))
        sides.append([sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not (sp.IsControl(i) or sp.IsUnknown(i))])
    return sides[0], sides[1]


def make_marian(dest: Path, activation: str = "swish", scale: bool = True, share: bool = True, tie: bool = True,
                seed: int = 0, separate_vocabs: bool = False, codes: tuple[str, ...] = (),
                decoder: tuple[int, int] | None = None) -> Path:
    """A random MarianMTModel with its MarianTokenizer files, saved as transformers saves them: one
    id table in Marian's order (</s>, <unk>, the pieces of both sides, <pad> last), or with
    separate_vocabs a table per side (vocab.json, target_vocab.json: </s>, <unk>, <pad>, that
    side's pieces; the tables differ in size, the special ids are the same in both). codes: target
    language tokens (>>fra<<) in the source table after <unk>, as a multilingual model has them.
    decoder: the decoder's (heads, feed-forward width) where they differ from the encoder's 4, 64."""
    dest.mkdir(parents=True)
    source, target = _spm_models(dest)
    if separate_vocabs:
        tables = [["</s>", "<unk>", "<pad>", *source], ["</s>", "<unk>", "<pad>", *target]]
        pad, sizes = 2, {"vocab_size": len(tables[0]), "decoder_vocab_size": len(tables[1])}
        share = False
    else:
        tables = [["</s>", "<unk>", *codes, *dict.fromkeys(source + target), "<pad>"]]
        pad, sizes = len(tables[0]) - 1, {"vocab_size": len(tables[0])}
    for name, table in zip(("vocab.json", "target_vocab.json"), tables):
        (dest / name).write_text(json.dumps({p: i for i, p in enumerate(table)}), encoding="utf-8")
    d = 32
    cfg = transformers.MarianConfig(
        **sizes, d_model=d, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=decoder[0] if decoder else 4, encoder_ffn_dim=64,
        decoder_ffn_dim=decoder[1] if decoder else 64, max_position_embeddings=128,
        pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0,
        activation_function=activation, scale_embedding=scale, share_encoder_decoder_embeddings=share,
        tie_word_embeddings=tie, bad_words_ids=[[pad]])
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            quiet = "decoder" in name and ("self_attn.out_proj" in name or "fc2" in name)
            std = 0.053 if "embed_tokens" in name or "shared" in name or "lm_head" in name else 0.05 if quiet else 0.2
            if p.dim() == 2:
                p.normal_(0.0, std)
            else:
                p.normal_(1.0 if "layer_norm" in name and name.endswith("weight") else 0.0, 0.2 if "norm" in name else 0.1)
        model.final_logits_bias.normal_(0.0, 0.5)
        _end_sentences(model, tie, dest)
    model.save_pretrained(dest)
    extra = {"target_vocab_file": str(dest / "target_vocab.json"), "separate_vocabs": True} if separate_vocabs else {}
    transformers.MarianTokenizer(str(dest / "source.spm"), str(dest / "target.spm"),
                                 str(dest / "vocab.json"), **extra).save_pretrained(dest)
    return dest


def _end_sentences(model, tie: bool, dest: Path) -> None:
    """Point </s>'s output row along the position code of step 10, as long as makes the most
    greedy outputs of SOURCES end after 1 to LIMIT - 2 tokens (what suits depends on the model)."""
    table = model.model.decoder.embed_positions.weight
    direction = table[10] - table[:60].mean(0)
    rows = model.lm_head.weight if not tie else model.get_decoder().embed_tokens.weight
    tok = transformers.MarianTokenizer(str(dest / "source.spm"), str(dest / "target.spm"), str(dest / "vocab.json"))
    enc = tok(SOURCES[::3], return_tensors="pt", padding=True)
    best = (-1, 0.0)
    for length in (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0):
        rows[0] = length * direction / direction.norm()
        out = model.generate(**enc, max_new_tokens=LIMIT, num_beams=1)[:, 1:].tolist()
        ended = sum(0 in s[1:LIMIT - 1] for s in out)
        best = max(best, (ended + len({tuple(s) for s in out}), length))
    rows[0] = best[1] * direction / direction.norm()


# ----------------------------------------------------------------------------------------------
# import: mt decodes as transformers does

#: name -> (activation, scale_embedding, shared embeddings, tied output, length penalty alpha,
#: separate id tables)
CONFIGS = {
    "swish-scaled-shared-tied": ("swish", True, True, True, 1.0, False),
    "gelu-unscaled-separate-untied": ("gelu", False, False, False, 0.6, False),
    "relu-scaled-separate-tied": ("relu", True, False, True, 1.0, False),
    "swish-unscaled-shared-tied": ("swish", False, True, True, 0.6, False),
    "swish-scaled-separate-vocabs-tied": ("swish", True, False, True, 1.0, True),
}
#: configurations whose decoder has its own heads and feed-forward width (decoder_attention_heads 2,
#: decoder_ffn_dim 48 against the encoder's 4 and 64)
DECODER_SHAPED = {"swish-scaled-separate-vocabs-tied"}


class Imported:
    def __init__(self, folder: Path, run_dir: Path, alpha: float) -> None:
        self.folder, self.run_dir, self.alpha = folder, run_dir, alpha
        self.hf = transformers.MarianMTModel.from_pretrained(folder).eval()
        self.tok = transformers.MarianTokenizer.from_pretrained(folder)
        self.run = load_run(run_dir)
        imported_from = json.loads((run_dir / "meta.json").read_text())["imported_from"]
        self.rows = imported_from["marian_rows"]  # the target side's; the source side's where it has its own
        self.src_rows = imported_from.get("marian_source_rows", self.rows)
        self.pad, self.eos = self.hf.config.pad_token_id, self.hf.config.eos_token_id

    def generate(self, lines: list[str], **options) -> list[list[int]]:
        """transformers' outputs (Marian ids, without the start token and </s>); None where the
        output reached the length limit instead of ending."""
        enc = self.tok(lines, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.hf.generate(**enc, do_sample=False, max_new_tokens=LIMIT, **options)
        ids = [s[1:] for s in out.tolist()]
        return [s[: s.index(self.eos)] if self.eos in s[: LIMIT - 1] else None for s in ids]

    def search(self, lines: list[str], search) -> list[list[int]]:
        """mt's outputs of `search`, as Marian ids."""
        src, lengths = source_tensor(self.run.src_vocab.encode_batch(lines))
        return [[self.rows[t] for t in hyps[0].tokens] for hyps in search(self.run.model, src, lengths)]


@pytest.fixture(scope="module", params=list(CONFIGS))
def imported(request, tmp_path_factory) -> Imported:
    activation, scale, share, tie, alpha, separate_vocabs = CONFIGS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    # seed 10 for the separate tables (and their decoder's own shape): at seeds 0 and 3-9 that random
    # model says the same few words to most sources
    folder = make_marian(root / "hf", activation, scale, share, tie, seed=10 if separate_vocabs else 0,
                         separate_vocabs=separate_vocabs, decoder=(2, 48) if request.param in DECODER_SHAPED else None)
    import_huggingface(str(folder), root / "run")
    return Imported(folder, root / "run", alpha)


@pytest.fixture(scope="module")
def ending(imported) -> list[str]:
    """20 sources whose transformers outputs (greedy and beam 4) end before the length limit."""
    greedy = imported.generate(SOURCES, num_beams=1)
    beam = imported.generate(SOURCES, num_beams=4, length_penalty=imported.alpha, early_stopping=True)
    lines = [s for s, g, b in zip(SOURCES, greedy, beam) if g is not None and b is not None]
    assert len(lines) >= 20, f"only {len(lines)} of {len(SOURCES)} random-model outputs end"
    return lines[:20]


def test_segmentation_and_ids_are_the_tokenizers(imported):
    """mt's source ids, read through the id table, are MarianTokenizer's (which appends </s>)."""
    enc = imported.tok(SOURCES, padding=False)["input_ids"]
    mine = imported.run.src_vocab.encode_batch(SOURCES)
    assert [[imported.src_rows[i] for i in ids] + [imported.eos] for ids in mine] == enc


def test_each_side_keeps_its_heads_and_feed_forward_width(imported):
    cfg, hf = imported.run.config.model, imported.hf.config
    assert (cfg.heads, cfg.ff_dim) == (hf.encoder_attention_heads, hf.encoder_ffn_dim)
    assert (cfg.decoder_heads, cfg.decoder_ff_dim) == (hf.decoder_attention_heads, hf.decoder_ffn_dim)
    layer = imported.run.model.decoder[0]
    assert layer.self_attn.heads == hf.decoder_attention_heads and layer.ff.fc1.out_features == hf.decoder_ffn_dim


def test_greedy_is_generate_num_beams_1(imported, ending):
    theirs = imported.generate(ending, num_beams=1)
    mine = imported.search(ending, GreedySearch(max_len_a=0.0, max_len_b=LIMIT))
    assert mine == theirs
    assert len({tuple(t) for t in theirs}) > 3, "the outputs should differ between sentences"


def test_beam_4_is_generate_num_beams_4(imported, ending):
    """transformers' beam search with early_stopping=True ends a sentence once num_beams
    hypotheses have ended, ranking them by log-prob / length ** length_penalty (length with
    </s>): mt's early_stop with the d2l length penalty."""
    theirs = imported.generate(ending, num_beams=4, length_penalty=imported.alpha, early_stopping=True)
    search = BeamSearch(beam=4, len_penalty=LengthPenalty("d2l", imported.alpha), early_stop=True,
                        max_len_a=0.0, max_len_b=LIMIT)
    assert imported.search(ending, search) == theirs


def test_forced_scores_are_the_models(imported, ending):
    """mt's log-probability of transformers' outputs (with </s>) is transformers' own, within 1e-4."""
    outputs = imported.generate(ending, num_beams=4, length_penalty=imported.alpha, early_stopping=True)
    labels = [o + [imported.eos] for o in outputs]
    width = max(map(len, labels))
    enc = imported.tok(ending, return_tensors="pt", padding=True)
    padded = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    with torch.no_grad():
        lp = imported.hf(**enc, labels=padded).logits.float().log_softmax(-1)
    theirs = [float(lp[i, torch.arange(len(lab)), torch.tensor(lab)].sum()) for i, lab in enumerate(labels)]
    mt_id = {hf: mt for mt, hf in reversed(list(enumerate(imported.rows)))}
    scorer = Scorer(imported.run.model, imported.run.src_vocab, imported.run.tgt_vocab)
    mine = scorer.score_ids(imported.run.src_vocab.encode_batch(ending), [[mt_id[i] for i in o] for o in outputs])
    diffs = [abs(a - b.log_prob) for a, b in zip(theirs, mine)]
    print(f"\nlargest |mt - transformers| log-probability over {len(diffs)} sentences: {max(diffs):.2e}")
    assert max(diffs) < 1e-4, diffs


def test_language_codes_are_split_off_as_marian_tokenizer_does(tmp_path):
    """A multilingual model's source starts with the target language's token (`>>fra<< text`): mt's
    segmentation is MarianTokenizer's (the code one piece, <unk> for a code the table lacks, no code
    where the text has none), greedy decoding is generate's, and mt translate writes a line per line."""
    folder = make_marian(tmp_path / "hf", codes=(">>fra<<", ">>deu<<"))
    import_huggingface(str(folder), tmp_path / "run")
    imp = Imported(folder, tmp_path / "run", 1.0)
    lines = [f">>{'fra' if i % 2 else 'deu'}<< {s}" for i, s in enumerate(SOURCES[:40])]
    odd = [">>xyz<< " + SOURCES[0], SOURCES[1], ">>fra<<" + SOURCES[2], ">> not a code"]
    enc = imp.tok(lines + odd)["input_ids"]
    mine = imp.run.src_vocab.encode_batch(lines + odd)
    assert [[imp.src_rows[i] for i in ids] + [imp.eos] for ids in mine] == enc
    assert [imp.run.src_vocab.encode(line) for line in lines + odd] == mine
    codes = imp.run.src_vocab.language_codes
    assert set(codes) == {">>fra<<", ">>deu<<"} and {ids[0] for ids in mine[:40]} == set(codes.values())
    theirs = imp.generate(lines, num_beams=1)
    ours = imp.search(lines, GreedySearch(max_len_a=0.0, max_len_b=LIMIT))
    pairs = [(a, b) for a, b in zip(ours, theirs) if b is not None]
    assert len(pairs) >= 20 and all(a == b for a, b in pairs)
    r = run_mt("translate", "-m", tmp_path / "run", "--greedy", stdin="".join(f"{line}\n" for line in lines[:6] + odd))
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 10, r.explain()


def test_ctranslate2_export_of_an_import_is_mts_greedy(imported, ending, tmp_path):
    """`mt export --format ctranslate2` of an imported run (swish, output bias, Marian's positions,
    embedding scale on or off) decodes greedily as mt does. CTranslate2 does not mask <pad> by
    itself (mt's search and transformers' bad_words_ids do): suppress_sequences does it."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.interop.ctranslate2 import export_ctranslate2

    out = export_ctranslate2(imported.run_dir, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(out), device="cpu", inter_threads=1, intra_threads=1)
    sp = imported.run.src_vocab.sp
    results = translator.translate_batch([sp.EncodeAsPieces(line) for line in ending], beam_size=1,
                                         max_decoding_length=LIMIT, min_decoding_length=0,
                                         suppress_sequences=[["<pad>"]])
    vocab = imported.run.tgt_vocab
    mine = imported.search(ending, GreedySearch(max_len_a=0.0, max_len_b=LIMIT))
    assert [r.hypotheses[0] for r in results] == [vocab.pieces([imported.rows.index(i) for i in m]) for m in mine]


# ----------------------------------------------------------------------------------------------
# export: an mt run as a Marian model, and back

#: a tiny post-norm Transformer (Marian's layout) that trains in a second or two
POST_NORM = {
    "data": {"corpus": "synthetic", "synthetic_train": 600, "synthetic_valid": 20, "synthetic_test": 0,
             "synthetic_max_clauses": 1, "max_len": 30},
    "vocab": {"size": 120, "model_type": "word", "byte_fallback": False},
    "model": {"arch": "transformer", "d_model": 32, "heads": 4, "enc_layers": 1, "dec_layers": 1, "ff_dim": 64,
              "dropout": 0.0, "norm": "post", "share_embeddings": True},
    "train": {"batch_tokens": 600, "max_steps": 150, "lr": 0.005, "warmup": 20, "valid_every": 150,
              "label_smoothing": 0.0},
    "decode": {"search": "beam", "beam": 4, "len_penalty": "d2l", "alpha": 1.0},
}
LINES = [a for a, _ in synthetic.generate(30, seed=3, max_clauses=1)]


def _trained(tmp_path_factory, recipe: dict, name: str) -> Path:
    from mt.config import config_from_dict
    from mt.train.trainer import Trainer

    run_dir = tmp_path_factory.mktemp(name) / "run"
    Trainer(config_from_dict(recipe), run_dir).train()
    return run_dir


@pytest.fixture(scope="module")
def post_norm_run(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory, POST_NORM, "post")


@pytest.fixture(scope="module")
def pre_norm_run(tmp_path_factory) -> Path:
    """mt's default layout (pre-norm, a final layer norm after each stack): exported as Pegasus."""
    return _trained(tmp_path_factory, {**POST_NORM, "model": {**POST_NORM["model"], "norm": "pre"}}, "pre")


def _translate(run: Path, *options: str) -> list[str]:
    r = run_mt("translate", "-m", run, "--no-copy-unseen", *options, stdin="".join(f"{line}\n" for line in LINES))
    assert r.returncode == 0, r.explain()
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def separate_vocab_run(tmp_path_factory) -> Path:
    """Post-norm with a vocabulary per side: exported with two id tables (target_vocab.json); its
    decoder has other heads and feed-forward width than its encoder (decoder_attention_heads,
    decoder_ffn_dim)."""
    model = {**POST_NORM["model"], "share_embeddings": False, "dec_heads": 2, "dec_ff_dim": 48}
    return _trained(tmp_path_factory, {**POST_NORM, "vocab": {**POST_NORM["vocab"], "joint": False},
                                       "model": model}, "separate")


@pytest.mark.parametrize("fixture, norm, cls", [("post_norm_run", "post", "MarianMTModel"),
                                                ("pre_norm_run", "pre", "PegasusForConditionalGeneration"),
                                                ("separate_vocab_run", "post", "MarianMTModel")])
def test_round_trip_mt_to_huggingface_to_mt(fixture, norm, cls, request, tmp_path):
    """A trained mt run exported to Hugging Face (post-norm: Marian, with two id tables for a run
    with a vocabulary per side; pre-norm, mt's default: Pegasus): transformers' greedy and beam-4
    outputs are mt's (ids), and the export imported back into mt translates exactly as the run did."""
    trained = request.getfixturevalue(fixture)
    r = run_mt("export", "-m", trained, "--format", "huggingface", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.explain()
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == cls and isinstance(tok, transformers.MarianTokenizer)
    run = load_run(trained)
    src, lengths = source_tensor(run.src_vocab.encode_batch(LINES))
    enc = tok(LINES, return_tensors="pt", padding=True)
    assert enc["input_ids"].tolist() == [ids + [3] + [0] * (src.size(1) - 1 - len(ids))
                                         for ids in run.src_vocab.encode_batch(LINES)]
    for options, search in (({"num_beams": 1}, GreedySearch(max_len_a=0.0, max_len_b=LIMIT)),
                            ({"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
                             BeamSearch(beam=4, len_penalty=LengthPenalty("d2l", 1.0), early_stop=True,
                                        max_len_a=0.0, max_len_b=LIMIT))):
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=LIMIT, **options).tolist()
        ended = [i for i, s in enumerate(out) if 3 in s[1:LIMIT]]  # not cut at the length limit
        assert len(ended) >= 20, f"only {len(ended)} outputs end"
        mine = [h[0].tokens for h in search(run.model, src, lengths)]
        assert [mine[i] for i in ended] == [out[i][1: out[i].index(3)] for i in ended]
    r = run_mt("import", "huggingface", tmp_path / "hf", "--out", tmp_path / "back")
    assert r.returncode == 0, r.explain()
    back = yaml.safe_load((tmp_path / "back" / "config.yaml").read_text())["model"]
    assert back["norm"] == norm
    assert (tmp_path / "hf" / "target_vocab.json").is_file() == (fixture == "separate_vocab_run")
    sides = (2, 48) if fixture == "separate_vocab_run" else (None, None)
    assert (hf.config.decoder_attention_heads, hf.config.decoder_ffn_dim) == (sides[0] or 4, sides[1] or 64)
    assert (back["dec_heads"], back["dec_ff_dim"]) == sides
    # the loop guard off on both sides: transformers has none, so an import decodes without it
    assert _translate(tmp_path / "back", "--max-repeat", "0") == _translate(trained, "--max-repeat", "0")


@pytest.mark.parametrize("model, fragment", [({"norm": "pre", "share_embeddings": False}, "share_embeddings=false"),
                                             ({"positions": "learned"}, "model.positions=learned"),
                                             ({"arch": "rnn"}, "model.arch=rnn")])
def test_export_refuses_what_marian_cannot_express(post_norm_run, tmp_path, model, fragment):
    """A pre-norm run with two embeddings (Pegasus has one), learned positions and RNN runs have no
    Hugging Face form here: one line, nothing written (the recipe is checked before any weight is
    read)."""
    import yaml

    run = tmp_path / "run"
    run.mkdir()
    cfg = yaml.safe_load((post_norm_run / "config.yaml").read_text())
    cfg["model"] = {"arch": "rnn"} if "arch" in model else {**cfg["model"], **model}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = run_mt("export", "-m", run, "--format", "huggingface", "--out", tmp_path / "hf")
    assert_clean_failure(r, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ----------------------------------------------------------------------------------------------
# fine-tuning an imported model; malformed folders


def _fine_tune_recipe(parent: Path, folder: Path) -> Path:
    """The imported run's config with a small corpus of files and train.init_from the run."""
    import yaml

    pairs = synthetic.generate(120, seed=21, max_clauses=1)
    for split, part in (("train", pairs[:100]), ("valid", pairs[100:])):
        (folder / f"{split}.src").write_text("".join(f"{s}\n" for s, _ in part), encoding="utf-8")
        (folder / f"{split}.tgt").write_text("".join(f"{t}\n" for _, t in part), encoding="utf-8")
    cfg = yaml.safe_load((parent / "config.yaml").read_text(encoding="utf-8"))
    cfg["data"] = {"corpus": "files", **{f"{s}_{side}": str(folder / f"{s}.{side}")
                                         for s in ("train", "valid") for side in ("src", "tgt")}}
    cfg["train"] = {"init_from": str(parent), "max_steps": 8, "batch_tokens": 200, "lr": 0.003, "warmup": 1,
                    "valid_every": 4, "save_every": 2, "valid_max_sentences": 5, "seed": 3}
    cfg["decode"] = {**cfg["decode"], "search": "greedy"}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return folder / "recipe.yaml"


def _train(args: list, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MT_", "OMP_", "MKL_"))}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "mt.cli.main", "train", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=log.parent)


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    """A Marian folder of the usual OPUS-MT configuration (swish, scaled, shared, tied); read-only."""
    return make_marian(tmp_path_factory.mktemp("marian") / "hf")


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, dest))


def test_imported_model_fine_tunes_and_resumes_bitwise(marian, tmp_path):
    """Fine-tuning with train.init_from (the corpus prepared with the imported vocabulary), killed
    after its first checkpoint and resumed: the same weights as an uninterrupted run, and other
    translations than the imported model's."""
    from safetensors.torch import load_file

    folder = marian
    import_huggingface(str(folder), tmp_path / "opus")
    recipe = _fine_tune_recipe(tmp_path / "opus", tmp_path)
    a = _train([recipe, "--run-dir", tmp_path / "A"], tmp_path / "A.log")
    b = _train([recipe, "--run-dir", tmp_path / "B"], tmp_path / "B.log")
    latest = tmp_path / "B" / "checkpoints" / "latest"
    while not latest.is_file() and b.poll() is None:
        time.sleep(0.005)
    b.send_signal(signal.SIGKILL)
    b.wait()
    if b.returncode < 0:  # killed before the end: resume it
        b = _train(["--resume", tmp_path / "B"], tmp_path / "B.log")
    assert b.wait(timeout=300) == 0, (tmp_path / "B.log").read_text()[-3000:]
    assert a.wait(timeout=300) == 0, (tmp_path / "A.log").read_text()[-3000:]
    wa = load_file(str(tmp_path / "A" / "checkpoints" / "step_00000008" / "model.safetensors"))
    wb = load_file(str(tmp_path / "B" / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    before = load_file(str(tmp_path / "opus" / "model.safetensors"))
    assert any(not torch.equal(before[k], wa[k]) for k in before)
    lines = "".join(f"{s}\n" for s in SOURCES[:20])
    tuned = run_mt("translate", "-m", tmp_path / "A", "--checkpoint", "last", "--greedy", stdin=lines)
    original = run_mt("translate", "-m", tmp_path / "opus", "--greedy", stdin=lines)
    assert tuned.returncode == original.returncode == 0, tuned.explain() + original.explain()
    assert tuned.stdout != original.stdout


def test_mt_prepare_alone_uses_the_parents_vocabulary(marian, tmp_path):
    """`mt prepare` of a fine-tuning recipe (train.init_from an imported run) encodes the corpus with
    the run's SentencePiece models, not new ones, so `mt train --set data.prepared=DIR` fine-tunes on it."""
    import hashlib

    import_huggingface(str(marian), tmp_path / "opus")
    recipe = _fine_tune_recipe(tmp_path / "opus", tmp_path)
    r = run_mt("prepare", recipe, "--out", tmp_path / "prep")
    assert r.returncode == 0, r.explain()
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    parent = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "opus").glob("*.model")}
    assert manifest["vocab"] and sorted(manifest["vocab"].values()) == sorted(parent.values()), (manifest["vocab"], parent)
    r = run_mt("train", recipe, "--run-dir", tmp_path / "tuned", "--set", f"data.prepared={tmp_path / 'prep'}",
               "--set", "train.max_steps=2")
    assert r.returncode == 0, r.explain()


def _malformed(folder: Path, how: str) -> None:
    if how == "missing spm":
        (folder / "target.spm").unlink()
    elif how == "vocab size":
        vocab = json.loads((folder / "vocab.json").read_text())
        vocab.pop(next(p for p in vocab if p not in ("</s>", "<unk>", "<pad>")))
        (folder / "vocab.json").write_text(json.dumps(vocab))
    elif how == "foreign":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    elif how == "code in a pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"x": _Exec(f"open({str(folder / 'EXECUTED')!r}, 'w')")}, folder / "pytorch_model.bin")


class _Exec:
    """Unpickling this runs `code` (what a weights_only load refuses)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


@pytest.mark.parametrize("how, fragment", [("missing spm", "no target.spm"), ("vocab size", "vocab_size"),
                                           ("foreign", "not a Marian model"),
                                           ("code in a pickle", "weights_only=True")])
def test_malformed_folder_is_one_line_and_no_run(marian, how, fragment, tmp_path):
    folder = _copy(marian, tmp_path / "hf")
    _malformed(folder, how)
    (tmp_path / "runs").mkdir()
    r = run_mt("import", "huggingface", folder, "--out", tmp_path / "runs" / "new", cwd=tmp_path)
    assert_clean_failure(r, fragment)
    assert not any((tmp_path / "runs").iterdir())  # no run directory, no temporary one left
    assert not (folder / "EXECUTED").exists()


def test_safe_pickle_weights_import(marian, tmp_path):
    """pytorch_model.bin holding plain tensors (older saves) imports as model.safetensors does."""
    folder = _copy(marian, tmp_path / "hf")
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    import_huggingface(str(folder), tmp_path / "a")
    (folder / "model.safetensors").unlink()
    import_huggingface(str(folder), tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_runs_from_before_these_options_translate_as_before(post_norm_run, tmp_path):
    """A config.yaml without the options Marian brought (embed_scale, output_bias, shared_ids) is a
    run trained before them: it loads with their defaults, which are the old behaviour (the same
    weights, no output bias) and translates as the same run with them written out."""
    import shutil

    import yaml

    old = Path(shutil.copytree(post_norm_run, tmp_path / "old"))
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    for section, keys in (("model", ("embed_scale", "output_bias")), ("vocab", ("shared_ids",))):
        for key in keys:
            assert key in cfg[section]
            del cfg[section][key]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    model = load_run(old).model
    assert model.output.bias is None and model.src_embed.scale == 32 ** 0.5
    assert _translate(old) == _translate(post_norm_run)
