"""Unseen characters copied into the translation (mt/decode/unseen.py, `decode.copy_unseen`): the placing
rule on hand-made attention, and the translator with byte-fallback and word vocabularies, every
model family, beam/greedy/sampling, n-best lists, prefixes, ensembles and cut lines."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mt.data import synthetic
from mt.config import RNNConfig, VocabConfig
from mt.decode.ensemble import EnsembleModel
from mt.models import build_model
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty, SamplingSearch
from mt.decode.translator import Translator, load_run
from mt.decode.unseen import UnseenCopier, copy_words
from mt.data.vocab import train_vocab

NAMES = ["Москва", "東京", "😀", "Đorđe", "Αθήνα", "서울"]


def test_an_unseen_word_replaces_the_target_word_that_is_the_models_attempt_at_it() -> None:
    # "a man from Москва runs ." -> "ein mann aus Mosgrava rennt ."; every target word attends to the
    # unseen word's pieces a lot (they draw attention), "Mosgrava" most, and it attends to nothing more
    src = "a man from Москва runs .".split()
    tgt = "ein mann aus Mosgrava rennt .".split()
    attention = torch.tensor([
        [0.6, 0.0, 0.0, 0.4, 0.0, 0.0],
        [0.0, 0.5, 0.0, 0.5, 0.0, 0.0],
        [0.0, 0.0, 0.4, 0.6, 0.0, 0.0],  # aligned to Москва, but attends to it less than Mosgrava does
        [0.0, 0.0, 0.1, 0.9, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.3, 0.7, 0.0],
        [0.0, 0.0, 0.0, 0.2, 0.0, 0.8],
    ])
    words, position, copies = copy_words(src, tgt, attention, unseen=[3])
    assert words == "ein mann aus Москва rennt .".split()
    assert position == list(range(6)) and copies == [(3, 3)]


def test_a_dropped_unseen_word_is_inserted_before_the_word_that_attends_to_it_most() -> None:
    src = "a child smiles 😀 while running".split()
    tgt = "ein kind lächelt während es rennt".split()
    attention = torch.tensor([
        [0.9, 0.0, 0.0, 0.1, 0.0, 0.0],
        [0.0, 0.8, 0.0, 0.2, 0.0, 0.0],
        [0.0, 0.0, 0.6, 0.4, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.45, 0.55, 0.0],  # attends to 😀 most of all target words, but to "while" more
        [0.0, 0.0, 0.0, 0.1, 0.9, 0.0],
        [0.0, 0.0, 0.0, 0.1, 0.0, 0.9],
    ])
    words, position, copies = copy_words(src, tgt, attention, unseen=[3])
    assert words == "ein kind lächelt 😀 während es rennt".split()
    assert position == [0, 1, 2, 4, 5, 6] and copies == [(3, 3)]


def test_kept_words_prefix_words_and_unknown_pieces() -> None:
    src = "Zoë sees 東京 .".split()
    attention = torch.tensor([[0.6, 0.0, 0.4, 0.0], [0.0, 0.3, 0.7, 0.0], [0.0, 0.0, 0.4, 0.6]])
    # a word whose unseen characters the output already holds is not copied again
    assert copy_words(src, ["東京", "sieht", "."], attention, unseen=[2])[2] == []
    # a forced prefix's words stay: the copy goes to the first free word
    words, _, copies = copy_words(src, ["Zoe", "sieht", "."], attention, unseen=[2], keep=2)
    assert words[:2] == ["Zoe", "sieht"] and "東京" in words and copies == [(2, words.index("東京"))]
    # a word the source has twice is copied twice
    twice = "東京 and 東京".split()
    words, _, copies = copy_words(twice, ["Tokio", "und", "Kyoto"], torch.tensor(
        [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]]), unseen=[0, 2])
    assert words == ["東京", "und", "東京"] and copies == [(0, 0), (2, 2)]
    # a target word holding the unknown piece becomes the source word it attends to most
    words, _, copies = copy_words(src, ["⁇", "sieht", "."], attention, unseen=[], unknown=[0])
    assert words == ["Zoë", "sieht", "."] and copies == [(0, 0)]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory):
    lines = [s for pair in synthetic.generate(400, seed=1) for s in pair]
    return train_vocab(lines, tmp_path_factory.mktemp("v") / "spm.model", VocabConfig(size=400, model_type="bpe"))


def _model(arch: str, v: int):
    torch.manual_seed(0)
    if arch == "transformer":
        from mt.config import TransformerConfig

        cfg = TransformerConfig(d_model=32, heads=4, enc_layers=2, dec_layers=2, ff_dim=64, max_positions=128)
    else:
        cfg = RNNConfig(cell="gru", attention=arch, emb_dim=16, hidden=32, enc_layers=1, dec_layers=1)
    return build_model(cfg, v, v).eval()


LINES = ["a man from Москва sees the dog .", "the cat sees a dog .", "two 😀 boys see three Đorđe houses .",
         "", "東京"]


@pytest.mark.parametrize("arch", ["transformer", "bahdanau", "ensemble"])
@pytest.mark.parametrize("search", ["greedy", "beam", "sampling"])
def test_every_unseen_word_reaches_the_output_and_other_lines_are_untouched(vocab, arch: str, search: str) -> None:
    model = (EnsembleModel([_model("transformer", len(vocab)), _model("luong_general", len(vocab))]).eval()
             if arch == "ensemble" else _model(arch, len(vocab)))
    make = {"greedy": lambda: GreedySearch(max_len_a=1.0, max_len_b=5),
            "beam": lambda: BeamSearch(4, LengthPenalty("gnmt", 0.6), max_len_a=1.0, max_len_b=5, n_best=3),
            "sampling": lambda: SamplingSearch(topk=5, seed=3, n_best=2, max_len_a=1.0, max_len_b=5)}[search]
    on = Translator(model, vocab, vocab, make(), copy_unseen=True).translate(LINES)
    off = Translator(model, vocab, vocab, make(), copy_unseen=False).translate(LINES)
    for line, a, b in zip(LINES, on, off):
        unseen = [w for w in line.split() if w in {n for n in NAMES}]
        if not unseen:
            assert a.text == b.text and a.nbest == b.nbest
            continue
        for text, _ in a.nbest:  # every hypothesis of the list, the best one first
            assert all(w in text.split() for w in unseen), (line, text)
        assert a.text == a.nbest[0][0]
        assert not any(w in b.text for w in unseen)  # an untrained model does not spell them out in bytes
        assert [s for _, s in a.nbest] == [s for _, s in b.nbest]  # scores are the model's


def test_alignments_are_renumbered_and_prefixes_stay(vocab) -> None:
    model = _model("transformer", len(vocab))
    lines = ["two 😀 boys see three Đorđe houses .", "a man from Москва sees the dog ."]
    tr = Translator(model, vocab, vocab, BeamSearch(3, max_len_a=1.0, max_len_b=5, return_attention=True),
                    alignments=True, copy_unseen=True)
    for line, t in zip(lines, tr.translate(lines, prefixes=["der grote", ""])):
        words = t.text.split()
        for name in (n for n in NAMES if n in line.split()):
            s = line.split().index(name)
            assert (s, words.index(name)) in t.alignment  # the copy is linked to its source word
        assert all(0 <= i < len(line.split()) and 0 <= j < len(words) for i, j in t.alignment)
    first = tr.translate(lines[:1], prefixes=["der grote"])[0].text
    assert first.startswith("der grote") and "😀" in first and "Đorđe" in first


def test_a_line_cut_into_pieces_gets_its_unseen_words(vocab) -> None:
    model = _model("transformer", len(vocab))
    line = "a man from Москва sees the dog . " * 3 + "two boys see 東京 ."
    t = Translator(model, vocab, vocab, GreedySearch(max_len_a=1.0, max_len_b=3), max_input_tokens=12,
                   warn=lambda msg: None, copy_unseen=True).translate([line])[0]
    assert t.pieces > 1 and t.text.split().count("Москва") >= 1 and "東京" in t.text.split()


def test_a_model_without_attention_is_left_alone(vocab) -> None:
    model = build_model(RNNConfig(cell="gru", attention="none", emb_dim=16, hidden=32), len(vocab), len(vocab)).eval()
    on = Translator(model, vocab, vocab, GreedySearch(max_len_b=5), copy_unseen=True).translate(LINES)
    off = Translator(model, vocab, vocab, GreedySearch(max_len_b=5), copy_unseen=False).translate(LINES)
    assert [t.text for t in on] == [t.text for t in off]


def test_the_copier_looks_at_lines_with_byte_or_unknown_pieces_only(vocab) -> None:
    copier = UnseenCopier(vocab, vocab)
    assert vocab.byte_fallback
    assert copier.needed(vocab.encode("a man from Москва")) and not copier.needed(vocab.encode("a man sees a dog ."))
    assert copier.needed(vocab.encode("a dog ."), [1])  # the unknown piece in the output


def test_a_trained_model_places_unseen_names_where_the_replaced_word_goes(small_transformer_run) -> None:
    """The small Transformer (word vocabulary: an unseen word is the unknown piece): in 40 new pairs
    one word the generator aligns is replaced by a name in another script; the name must reach
    every translation, and mostly at the place of the reference word it replaced."""
    run = load_run(small_transformer_run.path)
    rng = random.Random(1)
    lines, places = [], []
    for k, (src, _) in enumerate(synthetic.generate(40, seed=5, max_clauses=1)):
        words, ref = src.split(), dict(synthetic.reference_alignment(src))
        i = rng.choice(sorted(ref))
        words[i] = NAMES[k % len(NAMES)]
        lines.append(" ".join(words))
        places.append((words[i], ref[i]))
    out = Translator(run.model, run.src_vocab, run.tgt_vocab, GreedySearch(), copy_unseen=True).translate(lines)
    assert all(name in t.text.split() for t, (name, _) in zip(out, places))
    at_place = sum(t.text.split().index(name) == j for t, (name, j) in zip(out, places))
    # measured: none of the 40 names without the copy step; with it all 40, 16 at the reference
    # word's place (the first decoder layer places them, decode.copy_layer 0)
    assert at_place >= 12, at_place


def test_copy_settings_come_from_the_run(tmp_path: Path) -> None:
    from mt.config import DecodeConfig

    assert DecodeConfig().copy_unseen and DecodeConfig().copy_layer == 0
    assert not DecodeConfig().with_options(copy_unseen=False).copy_unseen


def test_a_copy_layer_the_model_lacks_is_refused_at_once(vocab) -> None:
    from mt import MTError

    with pytest.raises(MTError, match="layer 5 does not exist"):
        Translator(_model("transformer", len(vocab)), vocab, vocab, GreedySearch(), copy_unseen=True, copy_layer=5)


def test_a_segmentation_made_by_the_caller_is_used_as_it_is(vocab) -> None:
    """mt serve segments a request once, to price it, and hands the ids to the translator."""
    model = _model("transformer", len(vocab))
    tr = Translator(model, vocab, vocab, GreedySearch(max_len_b=5), copy_unseen=True)
    ids = vocab.encode_batch(LINES)
    assert [t.text for t in tr.translate(LINES, encoded=ids)] == [t.text for t in tr.translate(LINES)]
    # the ids decide what the model reads: line 0's text with line 1's ids is line 1's translation
    other = tr.translate(LINES[:2], encoded=[ids[1], ids[0]])
    assert other[0].tokens == tr.translate([LINES[1]])[0].tokens
    assert other[1].tokens == Translator(model, vocab, vocab, GreedySearch(max_len_b=5)).translate([LINES[0]])[0].tokens
    with pytest.raises(ValueError, match="1 segmented lines for 2 lines"):
        tr.translate(LINES[:2], encoded=ids[:1])
