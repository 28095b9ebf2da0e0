"""Placeholders (mt/data/placeholders.py): spans found, masked and restored by index; training pairs."""

from __future__ import annotations

import random

import pytest

from mt import MTError
from mt.data.placeholders import (PLACEHOLDER, Protector, insert, mask_pair, placeholder, restore, shared_spans,
                                  symbols)


def non_latin(run: str) -> bool:
    """Stands in for a vocabulary's check: anything past Latin Extended-B is unseen."""
    return any(ord(c) > 0x24F for c in run)


PROTECT = Protector(is_unseen=non_latin, patterns=[r"#[A-Z]+\d+"])


@pytest.mark.parametrize("line, values", [
    ("A man in Tōkyō drinks coffee near 東京 station.", ["東京"]),  # ō is Latin: the word stays
    ("東京 is big", ["東京"]),  # at the start
    ("big is 東京", ["東京"]),  # at the end
    ("東京Москва", ["東京Москва"]),  # one run of letters: one span
    ("a temple in दिल्ली.", ["दिल्ली"]),  # vowel signs and viramas (marks) belong to their word
    ("from Санкт-Петербург - to 東京-", ["Санкт-Петербург", "東京"]),  # a hyphen inside a word joins it
    ("(東京), «Москва» and [42].", ["東京", "Москва", "42"]),  # inside punctuation
    ("At 14:30 on 2026-12-07 it cost 3.50 for 1,000 items", ["14:30", "2026-12-07", "3.50", "1,000"]),
    ("Mail bob.smith+x@example.co.uk. Or see https://example.com/a_(b)).", ["bob.smith+x@example.co.uk",
                                                                          "https://example.com/a_(b)"]),
    ("See www.example.org, then http://x.de/p?q=1&r=2!", ["www.example.org", "http://x.de/p?q=1&r=2"]),
    ("Great 😀! Really 😀😀.", ["😀", "😀😀"]),  # the emoji, not the punctuation after it
    ("order #AB12 and B2 and COVID-19", ["#AB12"]),  # a user pattern; digits in or joined to a word stay
])
def test_spans_are_found_masked_and_restored(line: str, values: list[str]) -> None:
    masked = PROTECT.mask(line, limit=8)
    assert list(masked.values) == values
    assert not any(v in masked.text for v in values)
    assert [int(i) for i in PLACEHOLDER.findall(masked.text)] == list(range(len(values)))
    back = masked.restore(masked.text)
    assert (back.text, back.missing, back.dropped) == (line, (), 0)


def test_adjacent_and_repeated_spans() -> None:
    line = "東京 42 東京, 東京42 and 42"
    masked = PROTECT.mask(line, limit=8)
    # the same text shares one placeholder; 東京42 is one word (letters and digits) holding an unseen character
    assert masked.text == "⦅0⦆ ⦅1⦆ ⦅0⦆, ⦅2⦆ and ⦅1⦆"
    assert masked.values == ("東京", "42", "東京42") and masked.counts == (2, 2, 1)
    assert masked.restore(masked.text).text == line
    # a model that reorders: values follow their indices
    assert masked.restore("⦅1⦆ ⦅2⦆ ⦅0⦆ ⦅0⦆ ⦅1⦆").text == "42 東京42 東京 東京 42"


def test_a_literal_placeholder_in_the_input_is_protected_text() -> None:
    masked = PROTECT.mask("⦅3⦆ and 東京", limit=8)
    assert masked.values == ("⦅3⦆", "東京") and masked.text == "⦅0⦆ and ⦅1⦆"
    assert masked.restore(masked.text).text == "⦅3⦆ and 東京"


def test_spans_past_the_limit_stay_as_text() -> None:
    masked = PROTECT.mask("1 2 3 4", limit=2)
    assert masked.text == "⦅0⦆ ⦅1⦆ 3 4" and masked.values == ("1", "2")


def test_restore_drops_extra_and_unknown_placeholders_and_reports_missing_ones() -> None:
    got = restore("⦅5⦆ a ⦅0⦆ b ⦅0⦆ c ⦅1⦆", ["X", "Y", "Z"])
    assert got.text == "a X b c Y"  # ⦅5⦆ unknown, the second ⦅0⦆ beyond the source's one: removed with a space
    assert got.dropped == 2 and got.missing == (2,)
    assert restore("a ⦅0⦆.", ["X"], [1]).text == "a X."
    assert insert("ein Mann", "東京", 1) == "ein 東京 Mann" and insert("ein Mann", "東京", 9) == "ein Mann 東京"
    assert insert("", "東京", 0) == "東京"


def test_without_a_vocabulary_check_only_urls_addresses_numbers_and_patterns() -> None:
    plain = Protector()
    assert plain.mask("東京 at 5", limit=4).text == "東京 at ⦅0⦆"
    only_urls = Protector(kinds=["url"])
    assert only_urls.mask("see www.a.org at 5", limit=4).text == "see ⦅0⦆ at 5"
    with pytest.raises(MTError, match="unknown kind"):
        Protector(kinds=["names"])
    with pytest.raises(MTError, match="decode.protect: '\\(' is not a regular expression"):
        Protector(patterns=["("])


def test_training_pairs_share_placeholders_across_both_sides() -> None:
    src, tgt = "Tom met Mary in Paris at 5 pm, room 12.", "Tom traf Mary um 5 in Paris, Zimmer 12."
    assert set(shared_spans(src, tgt, Protector())) == {"Tom", "Mary", "Paris", "5", "12"}
    assert shared_spans("A man in Paris.", "Ein Mann in Paris.", Protector()) == ["Paris"]
    rng = random.Random(3)
    for _ in range(20):
        s, t = mask_pair(src, tgt, Protector(), count=8, prob=0.5, rng=rng)
        ids_s, ids_t = sorted(PLACEHOLDER.findall(s)), sorted(PLACEHOLDER.findall(t))
        assert ids_s == ids_t and len(set(ids_s)) == len(ids_s)  # each once per side, the same on both
        assert all(0 <= int(i) < 8 for i in ids_s)
    s, t = mask_pair(src, tgt, Protector(), count=8, prob=0.0, rng=rng)
    assert (s, t) == (src, tgt)
    # a number inside a longer one is not shared
    assert shared_spans("at 5 pm", "um 15 Uhr", Protector()) == []


def test_random_indices_train_every_placeholder() -> None:
    rng, seen = random.Random(0), set()
    for _ in range(200):
        s, _ = mask_pair("Anna is 7.", "Anna ist 7.", Protector(), count=6, prob=1.0, rng=rng)
        seen.update(PLACEHOLDER.findall(s))
    assert seen == {str(i) for i in range(6)}
    assert symbols(3) == [placeholder(0), placeholder(1), placeholder(2)] == ["⦅0⦆", "⦅1⦆", "⦅2⦆"]


def test_prepare_teaches_placeholders_on_both_sides_of_a_pair(tmp_path) -> None:
    """`mt prepare` with vocab.placeholders replaces the spans a pair shares by the same placeholder,
    about data.placeholder_prob of them, identically for one process and several."""
    from mt.config import config_from_dict
    from mt.data.dataset import PreparedData
    from mt.data.prepare import prepare
    from mt.data.vocab import Vocab

    rng = random.Random(0)
    names = ["Anna", "Boris", "Chen", "Dara"]
    pairs = []
    for n in range(400):
        name = rng.choice(names)
        pairs.append((f"so {name} sees {n} dogs near {n + 1} cats.", f"{name} {n} hunde bi {n + 1} sihet"))
    (tmp_path / "a.src").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "a.tgt").write_text("".join(t + "\n" for _, t in pairs))
    outs = []
    for workers in (1, 2):
        cfg = config_from_dict({"data": {"corpus": "files", "data_dir": str(tmp_path), "train_src": "a.src",
                                         "train_tgt": "a.tgt", "placeholder_prob": 0.5, "workers": workers},
                                "vocab": {"size": 400, "placeholders": 6}})
        outs.append(prepare(cfg, tmp_path / f"prep{workers}", log=lambda msg: None))
    assert outs[0]["files"] == outs[1]["files"]
    prep = PreparedData.open(tmp_path / "prep1")
    vocab = Vocab(prep.vocab_files()[0])
    masked_spans = 0
    for i in range(len(prep.src)):
        src, tgt = vocab.decode(prep.src[i].tolist()), vocab.decode(prep.tgt[i].tolist())
        ids = PLACEHOLDER.findall(src)
        assert sorted(ids) == sorted(PLACEHOLDER.findall(tgt))  # the same placeholders on both sides
        masked_spans += len(ids)
        # each is one piece of its own in the token ids the model trains on
        assert all(vocab.pieces(prep.src[i].tolist()).count(placeholder(int(k))) == 1 for k in ids)
    # three shared spans a pair (the name, two numbers), each replaced with probability 0.5
    assert 0.4 < masked_spans / (3 * len(prep.src)) < 0.6


# ----------------------------------------------------------------------------------------------
# a trained model carries placeholders across; the translator masks, restores and places them

NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jana"]
UNSEEN_NAMES = ["東京", "Москва", "القاهرة", "Αθήνα"]


def _with_spans(pairs: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """Synthetic pairs, some with a number ("... no 4711." -> "... nr 4711.") or a name in front
    ("Anna says ..." -> "Anna seit ..."): spans that stand identically on both sides."""
    out = []
    for src, tgt in pairs:
        r = rng.random()
        if r < 0.4:
            n = rng.randint(1, 99999)
            src, tgt = f"{src[:-1]} no {n}.", f"{tgt[:-1]} nr {n}."
        elif r < 0.7:
            name = rng.choice(NAMES)
            src, tgt = f"{name} says {src}", f"{name} seit {tgt}"
        out.append((src, tgt))
    return out


@pytest.fixture(scope="module")
def placeholder_run(tmp_path_factory):
    """A small Transformer trained 500 steps on synthetic pairs with numbers and names, 70% of those
    spans replaced by placeholders in training (data.placeholder_prob 0.7)."""
    import torch

    from mt.config import config_from_dict
    from mt.data import synthetic
    from mt.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("placeholders")
    rng = random.Random(0)
    split = synthetic.splits(4000, 100, 0, seed=3, max_clauses=1)
    for name in ("train", "valid"):
        pairs = _with_spans(split[name], rng)
        (folder / f"{name}.src").write_text("".join(s + "\n" for s, _ in pairs))
        (folder / f"{name}.tgt").write_text("".join(t + "\n" for _, t in pairs))
    cfg = config_from_dict({
        "data": {"corpus": "files", "data_dir": str(folder), "train_src": "train.src", "train_tgt": "train.tgt",
                 "valid_src": "valid.src", "valid_tgt": "valid.tgt", "max_len": 40, "placeholder_prob": 0.7},
        "vocab": {"size": 500, "byte_fallback": False, "placeholders": 4},
        "model": {"arch": "transformer", "d_model": 64, "heads": 4, "enc_layers": 2, "dec_layers": 2, "ff_dim": 128,
                  "dropout": 0.0, "share_embeddings": True},
        "train": {"batch_tokens": 1500, "max_steps": 500, "lr": 0.003, "warmup": 60, "valid_every": 1000,
                  "label_smoothing": 0.0},
        "decode": {"search": "greedy"},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, folder / "run").train()
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def _held_out_lines() -> list[str]:
    """Lines the model never saw: numbers of other sizes, names in scripts its vocabulary lacks."""
    from mt.data import synthetic

    rng, lines = random.Random(7), []
    for i, (src, _) in enumerate(synthetic.splits(0, 0, 40, seed=99, max_clauses=1)["test"]):
        number, name = rng.randint(100000, 999999), rng.choice(UNSEEN_NAMES)
        lines.append([f"{src[:-1]} no {number}.", f"{name} says {src}", f"{name} says {src[:-1]} no {number % 97}.",
                      src][i % 4])
    return lines


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_a_trained_model_carries_placeholders_across(placeholder_run, search: str) -> None:
    from dataclasses import replace

    from mt.decode.loading import load_for_decoding

    loaded = load_for_decoding([placeholder_run], device="cpu")
    decode = replace(loaded.run.config.decode, search=search, beam=4)
    translator = loaded.translator(decode)
    assert translator.protector.limit == 4
    lines = _held_out_lines()
    outputs = [t.text for t in translator.translate(lines)]
    spans = [(v, out) for line, out in zip(lines, outputs) for v in translator.protector.mask(line).values]
    assert len(spans) == 40  # 10 numbers, 10 names, 10 of both
    assert all(v in out for v, out in spans)  # with the placing of what the model dropped
    counts = translator.placeholder_counts
    assert counts["masked"] == 40 and counts["lacked"] <= 2  # the model itself carried >= 95% of them
    # without placeholders the same model reads the numbers as unknown words and the names as unseen ones
    plain = loaded.translator(replace(decode, placeholders=False, copy_unseen=False))
    plain_out = [t.text for t in plain.translate(lines)]
    assert sum(v in out for (v, _), out in zip(spans, plain_out)) < len(spans) / 2


def test_placeholders_the_output_lacks_are_placed_by_attention_or_appended(placeholder_run) -> None:
    """A model that never writes a placeholder (a random one, its placeholder pieces masked out): each is
    placed where the attention puts it (a model with attention), or appended (one without); the text of
    every span reaches the output either way."""
    import torch

    from mt.config import DecodeConfig, RNNConfig, TransformerConfig
    from mt.data.vocab import Vocab
    from mt.decode.translator import Translator
    from mt.models import build_model
    from mt.rundir import vocab_files

    vocab = Vocab(vocab_files(placeholder_run, True)[0])
    lines = ["東京 says the dog sees a cat no 4711.", "the cat sees www.example.org and help@example.net ."]
    for cfg, how in ((TransformerConfig(d_model=32, heads=4, enc_layers=1, dec_layers=1, ff_dim=64), "lacked"),
                     (RNNConfig(cell="gru", attention="none", emb_dim=16, hidden=32), "appended")):
        torch.manual_seed(0)
        model = build_model(cfg, len(vocab), len(vocab)).eval()
        never = [vocab.sp.PieceToId(placeholder(k)) for k in range(4)]
        step = model.decode_step

        def without_placeholders(prev, state, step=step, never=never):
            lp, attention = step(prev, state)
            lp[:, never] = float("-inf")
            return lp, attention

        model.decode_step = without_placeholders
        translator = Translator.for_model(model, vocab, vocab, DecodeConfig(search="greedy", max_len_b=6))
        outputs = [t.text for t in translator.translate(lines)]
        for value in ("東京", "4711", "www.example.org", "help@example.net"):
            assert sum(value in out for out in outputs) == 1, (value, outputs)
        assert translator.placeholder_counts[how] == 4
    assert outputs[0].endswith("東京 4711")  # appended in order, at the end


def test_prefixes_alignments_and_n_best_with_placeholders(placeholder_run) -> None:
    from dataclasses import replace

    from mt.decode.loading import load_for_decoding

    loaded = load_for_decoding([placeholder_run], device="cpu")
    translator = loaded.translator(replace(loaded.run.config.decode, search="beam", beam=4, n_best=3),
                                   alignments=True)
    line = "Москва says the dog sees a cat no 4711."
    [tr] = translator.translate([line], prefixes=["Москва seit"])
    assert tr.text.startswith("Москва seit") and "4711" in tr.text
    assert len(tr.nbest) == 3 and all("Москва" in text and "4711" in text for text, _ in tr.nbest)
    words, out = line.split(), tr.text.split()
    # each restored span is aligned to its own source word (the words of the line and of the translation
    # as written, not as the model saw them)
    for value in ("Москва", "4711"):
        t = next(i for i, w in enumerate(out) if value in w)
        assert {words[s] for s, tt in tr.alignment if tt == t} == {next(w for w in words if value in w)}


def test_mt_score_masks_both_sides_as_the_translation_was_made(placeholder_run) -> None:
    """Scoring a translation with the same masking on both sides gives the score of the search that made it."""
    from dataclasses import replace

    from mt.decode.loading import load_for_decoding
    from mt.decode.scorer import Scorer
    from mt.decode.search import LengthPenalty

    loaded = load_for_decoding([placeholder_run], device="cpu")
    decode = replace(loaded.run.config.decode, search="beam", beam=4, copy_unseen=False)
    lines = ["Москва says the dog sees a cat no 4711.", "the cat sees two dogs no 12."]
    translations = loaded.translator(decode).translate(lines)
    run = loaded.run
    penalty = LengthPenalty(decode.len_penalty, decode.alpha)
    masked = Scorer(run.model, run.src_vocab, run.tgt_vocab, penalty, placeholders=True)
    scored = masked.score([(line, tr.text) for line, tr in zip(lines, translations)])
    for s, tr in zip(scored, translations):
        assert s.score == pytest.approx(tr.nbest[0][1], abs=1e-4)  # float32 sums in another order
        assert any(PLACEHOLDER.search(p) for p in run.tgt_vocab.pieces(s.tokens))
    plain = Scorer(run.model, run.src_vocab, run.tgt_vocab, penalty).score([(lines[0], translations[0].text)])
    assert plain[0].score < scored[0].score  # read as written, the name and number cost the model more


def test_a_ctranslate2_export_carries_placeholders_masked_outside_the_engine(placeholder_run, tmp_path) -> None:
    """mt_export.json says how many placeholders the model carries; masking before CTranslate2 and
    restoring after it gives mt's own translations."""
    import json
    from dataclasses import replace

    import ctranslate2  # the test extra installs it

    from mt.decode.loading import load_for_decoding
    from mt.interop.ctranslate2 import export_ctranslate2

    out = export_ctranslate2(placeholder_run, tmp_path / "ct2")
    info = json.loads((out / "mt_export.json").read_text(encoding="utf-8"))
    assert info["placeholders"] == 4 and any("placeholders" in note for note in info["notes"])
    loaded = load_for_decoding([placeholder_run], device="cpu")
    # greedy, no guard, no copy: what CTranslate2 itself does
    decode = replace(loaded.run.config.decode, search="greedy", max_repeat=0, copy_unseen=False)
    translator = loaded.translator(decode)
    lines = _held_out_lines()[:12]
    mine = [t.text for t in translator.translate(lines)]
    engine = ctranslate2.Translator(str(out), device="cpu", compute_type="float32", intra_threads=1)
    vocab = loaded.run.src_vocab
    theirs = []
    for line in lines:
        masked = translator.protector.mask(line)
        pieces = vocab.pieces(vocab.encode(masked.text))
        max_len = int((len(pieces) + 1) * decode.max_len_a + decode.max_len_b)
        result = engine.translate_batch([pieces], beam_size=1, max_decoding_length=max_len)
        theirs.append(masked.restore(vocab.sp.DecodePieces(result[0].hypotheses[0])).text)
    # float32 on both; a near tie may flip one greedy choice
    assert sum(a == b for a, b in zip(mine, theirs)) >= len(lines) - 1, list(zip(mine, theirs))


def test_the_real_text_benchmark_reports_loops_and_spans(placeholder_run, tmp_path) -> None:
    """benchmarks/real_text.py on a tiny run: its JSON counts; with placeholders every span reaches the output."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_text.py"
    out = tmp_path / "real_text.json"
    r = subprocess.run([sys.executable, str(script), str(placeholder_run), "--beam", "2", "--threads", "1",
                        "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    [report] = json.loads(out.read_text(encoding="utf-8"))["runs"]
    assert report["lines"] == 30 and report["spans"] == 31 and report["placeholder_pieces"] == 4
    assert set(report) >= {"run", "no_guard", "no_placeholders", "before", "model_alone"}
    sys.path.insert(0, str(script.parent))
    from real_text import LINES

    missing = [(span, out) for (_, spans), out in zip(LINES, report["run"]["outputs"]) for span in spans
               if span not in out]
    assert report["run"]["spans_kept"] == 31 and not missing, missing
    assert report["run"]["placeholders"]["masked"] >= 31
    assert report["model_alone"]["guard_fired"] == 0  # max_repeat 0: no guard
    for name in ("run", "no_guard", "no_placeholders", "before", "model_alone"):
        assert 0 <= report[name]["degenerate"] <= 30 and len(report[name]["outputs"]) == 30


def test_placeholders_off_never_show_one_and_constraints_hold_spans(placeholder_run) -> None:
    """With placeholders off, a placeholder the model writes on its own is removed; a constraint holding a
    protected span of its line is met through the span's placeholder."""
    from dataclasses import replace

    from mt.decode.loading import load_for_decoding

    loaded = load_for_decoding([placeholder_run], device="cpu")
    decode = replace(loaded.run.config.decode, search="beam", beam=4)
    lines = _held_out_lines()
    model, vocab = loaded.run.model, loaded.run.tgt_vocab
    first, step = vocab.sp.PieceToId(placeholder(1)), model.decode_step

    def starts_with_a_placeholder(prev, state, step=step):  # the model's first choice: ⦅1⦆
        lp, attention = step(prev, state)
        lp[prev == model.bos_id, first] = 0.0
        return lp, attention

    model.decode_step = starts_with_a_placeholder
    off = loaded.translator(replace(decode, search="greedy", placeholders=False)).translate(lines)
    model.decode_step = step
    assert all(t.tokens[0] == placeholder(1) for t in off)  # the pieces the model wrote
    assert not any(PLACEHOLDER.search(t.text) for t in off)  # stand for nothing: removed
    line = "the dog sees a cat no 4711."
    [tr] = loaded.translator(decode).translate([line], constraints=[["nr 4711"]])
    assert "nr 4711" in tr.text
    warnings: list[str] = []
    too_long = " ".join(["nr 4711"] * 20)
    loaded.translator(decode, warn=warnings.append).translate([line], constraints=[[too_long]])
    assert len(warnings) == 1 and repr(too_long) in warnings[0]  # the phrase as written, not masked


@pytest.mark.parametrize("search", ["greedy", "beam", "sampling"])
def test_no_search_loops_on_lines_of_unseen_scripts(placeholder_run, search: str) -> None:
    """The real-text lines (names in other scripts, emoji, URLs, numbers) through a trained tiny run: no
    output loops, with the run's settings (placeholders and the loop guard on)."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    from mt.decode.loading import load_for_decoding

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from real_text import LINES, degenerate

    loaded = load_for_decoding([placeholder_run], device="cpu")
    decode = replace(loaded.run.config.decode, search=search, beam=4, n_best=1, topk=5)
    lines = [line for line, _ in LINES] + _held_out_lines()
    outputs = [t.text for t in loaded.translator(decode).translate(lines)]
    assert [o for o in outputs if degenerate(o)] == []
    assert degenerate("wie wie wie wie ein Haus") and degenerate("Zomonstranteseseseses")  # the detector works


def test_mt_serve_masks_requests_and_an_ensemble_carries_them(placeholder_run) -> None:
    """A request is translated as mt translate translates it (placeholders on, or off per request), and an
    ensemble of the run and itself keeps every span too."""
    from dataclasses import replace

    import torch
    from fastapi.testclient import TestClient

    from mt.config import ServeLimits
    from mt.decode.loading import load_for_decoding
    from mt.decode.translator import load_run
    from mt.serve.app import ServedModel, TranslationService, create_app

    lines = _held_out_lines()[:8]
    loaded = load_for_decoding([placeholder_run], device="cpu")
    decode = loaded.run.config.decode
    expected = [t.text for t in loaded.translator(decode).translate(lines)]
    service = TranslationService([ServedModel("m", load_run(placeholder_run), torch.device("cpu"))], ServeLimits())
    with TestClient(create_app(service)) as client:
        r = client.post("/translate", json={"texts": lines})
        assert r.status_code == 200, r.text
        assert [t["translation"] for t in r.json()["translations"]] == expected
        r = client.post("/translate", json={"texts": lines, "placeholders": False})
        off = [t["translation"] for t in r.json()["translations"]]
        assert off == [t.text for t in loaded.translator(replace(decode, placeholders=False)).translate(lines)]
    both = load_for_decoding([placeholder_run, placeholder_run], device="cpu")
    outputs = [t.text for t in both.translator(replace(decode, search="beam", beam=3)).translate(lines)]
    masked = [loaded.translator(decode).protector.mask(line).values for line in lines]
    assert all(v in out for values, out in zip(masked, outputs) for v in values)
