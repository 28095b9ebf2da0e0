"""`mt translate` with ensembles, target prefixes, alignments and token scores, and `mt score`, end to
end on the tiny run (installed console script in subprocesses, started at once on a few threads)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Result, assert_clean_failure, copy_run, run_mt

SOURCES = ["the big apple helps a blue door.", "three quiet men see the dog.", "", "a cat sees the house.",
           "clever kings see two apples, while a warm letter chases three quiet cats."]
PREFIXES = ["der grote", "", "dat", "ena katza klina", ""]  # a prefix for the empty line too
UNSEEN = ["the big Москва helps a blue door.", "three quiet men see 東京 and 😀.", "", "a cat sees the house."]
PHARAOH = re.compile(r"^(\d+-\d+( \d+-\d+)*)?$")


def _other_vocab_run(run: Path, dest: Path) -> Path:
    """The tiny run with another SentencePiece model of the same size (the weights still load)."""
    import sentencepiece as spm

    copy_run(run, dest)
    from mt.data.synthetic import generate

    text = [" ".join(w[::-1] for w in s.split()) for pair in generate(1000, seed=3) for s in pair]  # words reversed
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(text), model_prefix=str(dest / "spm"), vocab_size=200,
                                   pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False, minloglevel=2)
    return dest


@pytest.fixture(scope="module")
def results(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    ws = tmp_path_factory.mktemp("decode")
    paths = {"run": tiny_run, "twin": copy_run(tiny_run, ws / "twin"), "other": _other_vocab_run(tiny_run, ws / "other")}
    for name, lines in (("src", SOURCES), ("prefixes", PREFIXES), ("short_prefixes", PREFIXES[:3]), ("one", SOURCES[:1]),
                        ("unseen", UNSEEN)):
        paths[name] = ws / f"{name}.txt"
        paths[name].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    paths["jsonl"] = ws / "in.jsonl"
    paths["jsonl"].write_text("".join(json.dumps({"text": s, "prefix": p}) + "\n" for s, p in zip(SOURCES, PREFIXES)),
                              encoding="utf-8")
    paths["bad_jsonl"] = ws / "bad.jsonl"
    paths["bad_jsonl"].write_text('{"text": "a dog."}\n["not", "an", "object"]\n', encoding="utf-8")
    paths["long_prefix"] = ws / "long_prefix.txt"
    paths["long_prefix"].write_text(" ".join(["der hund"] * 200) + "\n", encoding="utf-8")
    long_pairs = [("a dog sees the cat.", "der hund"), ("two cats.", " ".join(["der hund"] * 200)),
                  ("three men.", "drei manner")]
    for name, rows in (("pairs_src", [s for s, _ in long_pairs]), ("pairs_tgt", [t for _, t in long_pairs]),
                       ("short_src", [long_pairs[0][0], long_pairs[2][0]]),
                       ("short_tgt", [long_pairs[0][1], long_pairs[2][1]])):
        paths[name] = ws / f"{name}.txt"
        paths[name].write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    paths["nbest"] = ws / "nbest.txt"
    paths["ensemble_out"] = ws / "ensemble.txt"
    commands = {
        "plain-greedy": "translate -m {run} --greedy -i {src}",
        "plain-beam": "translate -m {run} --beam 3 -i {src}",
        "prefix-greedy": "translate -m {run} --greedy -i {src} --prefix-file {prefixes}",
        "prefix-beam": "translate -m {run} --beam 3 -i {src} --prefix-file {prefixes}",
        "prefix-sample": "translate -m {run} --sample --topk 5 -i {src} --prefix-file {prefixes}",
        "prefix-ensemble": "translate -m {run} -m {twin} --beam 3 -i {src} --prefix-file {prefixes}",
        "jsonl-beam": "translate -m {run} --beam 3 -i {jsonl} --input-format jsonl",
        # --max-repeat 0: the tiny run loops, and the loop guard's way out can be pieces that `mt score`,
        # segmenting the detokenised text anew, would cut otherwise (so score other pieces)
        "ensemble-beam": "translate -m {run} -m {twin} --beam 3 -i {src} --checkpoint last --checkpoint last "
                         "--ensemble-weights 1,3 --scores --max-repeat 0 -o {ensemble_out}",
        "json": "translate -m {run} --greedy -i {src} --json",
        "json-beam": "translate -m {run} --beam 3 -i {src} --json",
        "alignments": "translate -m {run} --beam 3 -i {src} --alignments --scores",
        "nbest": "translate -m {run} --beam 4 --n-best 4 -i {src} -o {nbest}",
        "unseen": "translate -m {run} --beam 3 -i {unseen} --alignments",
        "unseen-off": "translate -m {run} --beam 3 -i {unseen} --no-copy-unseen",
        "unseen-json": "translate -m {run} --beam 3 --n-best 2 -i {unseen} --json",
        "score": "score -m {run} --src {src} --tgt {src} --json --alignments",
        "score-ensemble": "score -m {run} -m {twin} --src {src} --tgt {src}",
        "score-long": "score -m {run} --src {pairs_src} --tgt {pairs_tgt} --alignments",
        "score-long-json": "score -m {run} --src {pairs_src} --tgt {pairs_tgt} --json",
        "score-short": "score -m {run} --src {short_src} --tgt {short_tgt}",
        # failures
        "bad-ensemble": "translate -m {run} -m {other} -i {src}",
        "bad-prefix-count": "translate -m {run} -i {src} --prefix-file {short_prefixes}",
        "bad-jsonl": "translate -m {run} -i {bad_jsonl} --input-format jsonl",
        "bad-input-format": "translate -m {run} -i {src} --input-format xml",
        "bad-prefix-and-jsonl": "translate -m {run} -i {jsonl} --input-format jsonl --prefix-file {prefixes}",
        "bad-layer": "translate -m {run} -i {src} --alignments --alignment-layer 5",
        "bad-checkpoints": "translate -m {run} -m {twin} -i {src} --checkpoint best --checkpoint last --checkpoint best",
        "bad-long-prefix": "translate -m {run} -i {one} --prefix-file {long_prefix}",
        "bad-score-count": "score -m {run} --src {src} --tgt {short_prefixes}",
        "bad-score-tabs": "score -m {run}",
        "bad-score-half": "score -m {run} --src {src}",
        "bad-score-ensemble": "score -m {run} -m {other} --src {src} --tgt {src}",
        "bad-score-alpha": "score -m {run} --src {src} --tgt {src} --alpha -1",
        "bad-weights": "translate -m {run} -m {twin} -i {src} --ensemble-weights 1,-2",
    }
    stdin = {"bad-score-tabs": b"a dog\tein hund\nno tab here\n"}
    quoted = {k: shlex.quote(str(v)) for k, v in paths.items()}
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run_mt, *shlex.split(cmd.format(**quoted)), stdin=stdin.get(name), cwd=ws)
                   for name, cmd in commands.items() if name != "nbest"}
        futures["nbest"] = pool.submit(run_mt, *shlex.split(commands["nbest"].format(**quoted)), cwd=ws)
        out = {name: f.result() for name, f in futures.items()}
    out["rescore"] = run_mt("score", "-m", tiny_run, "--src", paths["src"], "--tgt", paths["nbest"], "--n-best-input",
                            "--len-penalty", "gnmt", cwd=ws)
    # the list with each source's entries worst first: rescoring must put them back in order
    entries = paths["nbest"].read_text(encoding="utf-8").splitlines()
    ids = [line.split(" ||| ")[0] for line in entries]
    paths["nbest_reversed"] = ws / "nbest_reversed.txt"
    paths["nbest_reversed"].write_text("".join(
        line + "\n" for i in dict.fromkeys(ids) for line in reversed([e for e, j in zip(entries, ids) if j == i])),
        encoding="utf-8")
    out["rescore-none"] = run_mt("score", "-m", tiny_run, "--src", paths["src"], "--tgt", paths["nbest_reversed"],
                                 "--n-best-input", "--len-penalty", "none", "--json", cwd=ws)
    out["nbest-text"] = paths["nbest"].read_text(encoding="utf-8")
    out["ensemble-text"] = paths["ensemble_out"].read_text(encoding="utf-8")
    paths["ensemble_hyp"] = ws / "ensemble.hyp"
    paths["ensemble_hyp"].write_text("".join(line.split("\t")[0] + "\n" for line in out["ensemble-text"].splitlines()),
                                     encoding="utf-8")
    out["score-ensemble-output"] = run_mt("score", "-m", tiny_run, "--checkpoint", "last", "--src", paths["src"],
                                          "--tgt", paths["ensemble_hyp"], "--len-penalty", "gnmt", cwd=ws)
    return out


def lines(r: Result) -> list[str]:
    assert r.returncode == 0, r.explain()
    assert r.stdout.endswith("\n"), r.explain()
    return r.stdout[:-1].split("\n")


@pytest.mark.parametrize("name", ["prefix-greedy", "prefix-beam", "prefix-sample", "prefix-ensemble", "jsonl-beam"])
def test_translations_start_with_their_prefix(results: dict, name: str) -> None:
    out = lines(results[name])
    assert len(out) == len(SOURCES)
    for text, prefix in zip(out, PREFIXES):
        assert text.startswith(prefix), (text, prefix)
    if name in ("prefix-greedy", "prefix-beam"):  # an empty prefix gives the ordinary output
        plain = lines(results[name.replace("prefix", "plain")])
        for text, ordinary, prefix in zip(out, plain, PREFIXES):
            if not prefix:
                assert text == ordinary
    if name == "jsonl-beam":  # the same as --prefix-file
        assert out == lines(results["prefix-beam"])


def test_an_ensemble_of_a_run_and_its_copy_scores_like_the_run(results: dict) -> None:
    """The beam scores of an ensemble of two copies of a run (--checkpoint given per run) are the
    run's own scores of those translations (the mixture of a model with itself is the model)."""
    assert results["ensemble-beam"].returncode == 0, results["ensemble-beam"].explain()
    ensemble = [line.split("\t") for line in results["ensemble-text"].splitlines()]
    single = [line.split("\t") for line in lines(results["score-ensemble-output"])]
    assert len(ensemble) == len(single) == len(SOURCES)
    for (text, beam_score), (_, normalised), src in zip(ensemble, single, SOURCES):
        if src:  # an empty line is not translated
            assert float(beam_score) == pytest.approx(float(normalised), abs=2e-4), text


def test_json_has_tokens_token_scores_and_alignment(results: dict) -> None:
    objs = [json.loads(line) for line in lines(results["json"])]
    assert [o["translation"] for o in objs] == lines(results["plain-greedy"])
    beam = [json.loads(line) for line in lines(results["json-beam"])]  # --json never changes the search
    assert [o["translation"] for o in beam] == lines(results["plain-beam"])
    for o, src in zip(objs, SOURCES):
        if not src:
            assert o["tokens"] == [] and o["alignment"] == []
            continue
        assert o["tokens"][-1] == "</s>" and len(o["token_scores"]) == len(o["tokens"])
        assert sum(o["token_scores"]) == pytest.approx(o["score"], abs=1e-3)  # greedy: no length penalty
        n_src, n_tgt = len(src.split()), len(o["translation"].split())
        assert {t for _, t in o["alignment"]} == set(range(n_tgt))  # every target word has one source word
        assert all(0 <= s < n_src for s, _ in o["alignment"])


def test_alignments_follow_a_tab_in_pharaoh_format(results: dict) -> None:
    for line, plain, src in zip(lines(results["alignments"]), lines(results["plain-beam"]), SOURCES):
        text, score, links = line.split("\t")
        assert text == plain and float(score) < 0 if src else True
        assert PHARAOH.match(links), links
        assert all(int(p.split("-")[0]) < len(src.split()) for p in links.split())


def test_unseen_words_are_copied_unless_switched_off(results: dict) -> None:
    on, off = lines(results["unseen"]), lines(results["unseen-off"])
    objs = [json.loads(line) for line in lines(results["unseen-json"])]
    assert len(on) == len(off) == len(objs) == len(UNSEEN)
    for src, a, b, obj in zip(UNSEEN, on, off, objs):
        text, links = a.split("\t")
        unseen = [w for w in src.split() if any(c in w for c in "Москва東京😀")]
        assert all(w in text.split() for w in unseen) and not any(w in b for w in unseen), (src, a, b)
        assert PHARAOH.match(links)
        for w in unseen:  # the copy is linked to its source word
            assert f"{src.split().index(w)}-{text.split().index(w)}" in links.split()
        assert all(all(w in h["translation"].split() for w in unseen) for h in obj["nbest"])
        if not unseen:
            assert text == b


def test_score_reports_per_token_scores(results: dict) -> None:
    objs = [json.loads(line) for line in lines(results["score"])]
    assert len(objs) == len(SOURCES)
    for o in objs:
        assert o["tokens"][-1] == "</s>" and len(o["token_scores"]) == len(o["tokens"])
        assert sum(o["token_scores"]) == pytest.approx(o["log_prob"], abs=1e-3)
    assert objs[2]["tokens"] == ["</s>"]  # the empty target: the eos alone
    # an ensemble of a run and its copy scores what the run scores
    ens = [line.split("\t") for line in lines(results["score-ensemble"])]
    assert [float(lp) for lp, _ in ens] == pytest.approx([o["log_prob"] for o in objs], abs=1e-3)
    for o, src in zip(objs, SOURCES):
        assert all(0 <= s < len(src.split()) for s, _ in o["alignment"])


def test_rescoring_the_beams_n_best_list_gives_its_scores(results: dict) -> None:
    """The beam's hypotheses scored by the same model: the same scores (gnmt penalty of the run)."""
    nbest = [line.split(" ||| ") for line in results["nbest-text"].splitlines()]
    rescored = [line.split(" ||| ") for line in lines(results["rescore"])]
    assert len(rescored) == len(nbest) and nbest
    # reranked: each source's entries, in source order, best new score first
    assert [int(i) for i, _, _ in rescored] == sorted(int(i) for i, _, _ in rescored)
    for i in {i for i, _, _ in rescored}:
        scores = [float(s) for j, _, s in rescored if j == i]
        assert scores == sorted(scores, reverse=True)
    old = sorted((int(i), t, float(s)) for i, t, s in nbest)
    new = sorted((int(i), t, float(s)) for i, t, s in rescored)
    assert [(i, t) for i, t, _ in old] == [(i, t) for i, t, _ in new]
    for (_, t, sa), (_, _, sb) in zip(old, new):
        if t:  # a hypothesis detokenised to "" cannot be told from an empty line's
            assert sb == pytest.approx(sa, abs=2e-4)


def test_score_marks_an_over_long_pair_and_goes_on(results: dict) -> None:
    """Corpus filtering: a pair longer than the model's positions keeps its line (-inf; "error" in
    JSON) with a warning naming the files and line; the other pairs score as without it."""
    out, short = lines(results["score-long"]), lines(results["score-short"])
    assert len(out) == 3
    assert out[1].split("\t")[:2] == ["-inf", "-inf"]
    assert [line.split("\t")[:2] for line in (out[0], out[2])] == [line.split("\t") for line in short]
    stderr = results["score-long"].stderr
    assert "mt: warning:" in stderr and "pairs_src.txt and" in stderr and "pairs_tgt.txt, line 2:" in stderr
    assert "more than the model's 127" in stderr
    objs = [json.loads(line) for line in lines(results["score-long-json"])]
    assert [o["id"] for o in objs] == [0, 1, 2]
    assert objs[1]["score"] is None and objs[1]["log_prob"] is None and "more than the model's" in objs[1]["error"]
    assert "error" not in objs[0] and objs[2]["log_prob"] == pytest.approx(float(short[1].split("\t")[0]), abs=1e-3)


def test_rescoring_reranks_each_sources_entries_by_the_new_score(results: dict) -> None:
    """An n-best list given worst first, rescored (without a length penalty): each source's entries
    come back sorted by the new score, the sources in order, none lost."""
    objs = [json.loads(line) for line in lines(results["rescore-none"])]
    nbest = [line.split(" ||| ") for line in results["nbest-text"].splitlines()]
    assert sorted((o["id"], o["translation"]) for o in objs) == sorted((int(i), t) for i, t, _ in nbest)
    assert [o["id"] for o in objs] == sorted(o["id"] for o in objs)
    for i in {o["id"] for o in objs}:
        scores = [o["score"] for o in objs if o["id"] == i]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([o["log_prob"] for o in objs if o["id"] == i])  # no penalty


FAILURES = {
    "bad-ensemble": ("cannot ensemble", "/other", "target vocabulary differs"),
    "bad-prefix-count": ("has 5 lines but", "short_prefixes.txt has 3", "one prefix per input line"),
    "bad-jsonl": ("bad.jsonl:2", '"text" string'),
    "bad-input-format": ("--input-format must be text or jsonl",),
    "bad-prefix-and-jsonl": ("--prefix-file and --input-format jsonl exclude each other",),
    "bad-layer": ("alignment layer 5 does not exist", "1 layers"),
    "bad-checkpoints": ("--checkpoint once", "2 runs, 3 checkpoints"),
    "bad-long-prefix": ("target prefix of", "longer than the model's 127 target positions"),
    "bad-score-count": ("src.txt has 5 lines but", "short_prefixes.txt has 3"),
    "bad-score-tabs": ("stdin:2", "one TAB"),
    "bad-score-half": ("both --src and --tgt",),
    "bad-score-ensemble": ("cannot ensemble", "target vocabulary differs"),
    "bad-score-alpha": ("--alpha must not be negative",),
    "bad-weights": ("--ensemble-weights", "must be >= 0"),
}


@pytest.mark.parametrize("name", FAILURES)
def test_bad_input_is_one_clear_error(results: dict, name: str) -> None:
    assert_clean_failure(results[name], *FAILURES[name])


def test_alignments_of_a_model_without_attention_are_one_clear_error(tmp_path: Path) -> None:
    """An RNN with model.attention: none has no attention to align with: --alignments (score and
    translate) is one error, not a crash; translate --json gives an empty alignment."""
    import yaml

    from conftest import DEMO_RECIPE

    recipe = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    recipe["model"] = {"arch": "rnn", "attention": "none", "emb_dim": 8, "hidden": 16, "enc_layers": 1,
                       "dec_layers": 1}
    (tmp_path / "rnn.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run = tmp_path / "rnn"
    settings = ["train.max_steps=2", "train.valid_every=2", "data.synthetic_train=200", "data.synthetic_valid=10",
                "data.synthetic_test=10", "vocab.size=200", "vocab.byte_fallback=false", "train.batch_tokens=400"]
    r = run_mt("train", tmp_path / "rnn.yaml", "--run-dir", run, *[a for s in settings for a in ("--set", s)], cwd=tmp_path)
    assert r.returncode == 0, r.explain()
    src = tmp_path / "src.txt"
    src.write_text("a dog sees the cat.\n\nthree men.\n", encoding="utf-8")
    assert_clean_failure(run_mt("score", "-m", run, "--src", src, "--tgt", src, "--alignments", cwd=tmp_path),
                         "no attention")
    assert_clean_failure(run_mt("translate", "-m", run, "-i", src, "--alignments", cwd=tmp_path), "--alignments",
                         "no attention")
    objs = [json.loads(line) for line in lines(run_mt("translate", "-m", run, "-i", src, "--json", cwd=tmp_path))]
    assert [o["alignment"] for o in objs] == [[], [], []]
