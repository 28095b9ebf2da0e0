"""Prepared corpora (mt prepare, mt.data.prepare, mt.data.dataset) and the batches drawn from them: decoding back
to the cleaned input, each cleaning rule counted, weights and temperature, DDP shares, verification."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mt import MTError
from mt.data import synthetic
from mt.config import config_from_dict
from mt.data.batching import TokenBatcher, epoch_shares
from mt.data.dataset import PreparedData, TokenArray
from mt.data.prepare import check_prepared, prepare
from mt.data.text import MAX_LINE_BYTES
from mt.data.vocab import Vocab


def write_pair(folder: Path, name: str, pairs: list[tuple[str, str]], gz: bool = False) -> tuple[Path, Path]:
    paths = []
    for side, lines in (("src", [s for s, _ in pairs]), ("tgt", [t for _, t in pairs])):
        path = folder / f"{name}.{side}{'.gz' if gz else ''}"
        data = "".join(line + "\n" for line in lines).encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


def tiny_cfg(folder: Path, data: dict, vocab: dict | None = None):
    return config_from_dict({"data": {"corpus": "files", "data_dir": str(folder), **data},
                             "vocab": {"size": 60, "model_type": "word", "byte_fallback": False, **(vocab or {})}})


def decoded(prep: PreparedData) -> list[tuple[str, str]]:
    vocab = Vocab(prep.vocab_files()[0])
    return [(vocab.decode(prep.src[i].tolist()), vocab.decode(prep.tgt[i].tolist())) for i in range(len(prep.src))]


def quiet(msg: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# preparing


def test_prepared_corpus_decodes_back_to_its_cleaned_input(tmp_path: Path) -> None:
    pairs = synthetic.generate(300, seed=5)
    src, tgt = write_pair(tmp_path, "a", pairs, gz=True)
    cfg = tiny_cfg(tmp_path, {"train_src": str(src), "train_tgt": str(tgt), "dedup": False, "max_ratio": 0},
                   {"size": 2000})
    manifest = prepare(cfg, tmp_path / "prep", log=quiet)
    prep = PreparedData.open(tmp_path / "prep")
    assert manifest["counts"]["read"] == 300
    kept = [p for p in pairs if p[0] != p[1]]
    assert decoded(prep) == kept and manifest["pairs"] == len(kept)
    assert prep.src.tokens.dtype == np.uint16 and isinstance(prep.src.tokens, np.memmap)
    assert manifest["tokens"]["src"] == int(prep.src.offsets[-1]) == sum(len(s.split()) for s, _ in kept)
    inputs = {r["side"]: r for r in manifest["inputs"]}
    assert inputs["src"]["path"] == str(src.resolve()) and inputs["src"]["bytes"] == src.stat().st_size
    assert inputs["tgt"]["sha256"] == __import__("hashlib").sha256(tgt.read_bytes()).hexdigest()
    assert set(manifest["vocab"]) == {"spm.model"}


def test_parallel_workers_write_the_same_files_as_one_process(tmp_path: Path, monkeypatch) -> None:
    pairs = synthetic.generate(2500, seed=6)
    src, tgt = write_pair(tmp_path, "a", pairs + pairs[100:400])
    monkeypatch.setattr("mt.data.prepare.POOL_MIN_BYTES", 0)
    monkeypatch.setattr("mt.data.prepare.CHUNK_PAIRS", 300)  # several chunks, several in flight
    base = {"train_src": str(src), "train_tgt": str(tgt)}
    one = prepare(tiny_cfg(tmp_path, {**base, "workers": 1}, {"size": 150}), tmp_path / "one", log=quiet)
    two = prepare(tiny_cfg(tmp_path, {**base, "workers": 2}, {"size": 150}), tmp_path / "two", log=quiet)
    assert two["workers"] == 2 and one["workers"] == 1
    assert one["files"] == two["files"] and one["counts"] == two["counts"]
    assert one["counts"]["duplicate"] == 300


def test_each_cleaning_rule_is_counted(tmp_path: Path) -> None:
    good = [("a b c", "x y z"), ("c a", "z x"), ("a b", "x y")]
    src_lines = [b"a b c", b"", b"same text", b"a b c d e f g", b"a", b"a b c", b"bad \xff byte", b"c a",
                 b"L" * (MAX_LINE_BYTES + 10), b"a b"]
    tgt_lines = [b"x y z", b"x", b"same text", b"x", b"x y z w", b"x y z", b"x", b"z x", b"x", b"x y"]
    # rules:      keep    empty   identical    too_long (7>6)   ratio 4   duplicate  invalid   keep  line  keep
    (tmp_path / "c.src").write_bytes(b"\n".join(src_lines) + b"\n")
    (tmp_path / "c.tgt").write_bytes(b"\n".join(tgt_lines) + b"\n")
    cfg = tiny_cfg(tmp_path, {"train_src": "c.src", "train_tgt": "c.tgt", "max_len": 6, "max_ratio": 3,
                              "skip_invalid": True})
    manifest = prepare(cfg, tmp_path / "prep", log=quiet)
    counts = manifest["counts"]
    assert counts == {"read": 10, "kept": 3, "invalid_utf8": 1, "line_too_long": 1, "empty": 1, "identical": 1,
                      "too_long": 1, "ratio": 1, "duplicate": 1}
    assert manifest["corpora"][0]["counts"] == counts
    assert decoded(PreparedData.open(tmp_path / "prep")) == good
    # without skip_invalid the bad line is an error naming file and line, and nothing is left behind
    with pytest.raises(MTError, match=r"c.src:7: invalid UTF-8"):
        prepare(tiny_cfg(tmp_path, {"train_src": "c.src", "train_tgt": "c.tgt"}), tmp_path / "strict", log=quiet)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))


def test_line_counts_must_match_and_out_must_be_new(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("a\nb\nc\n")
    (tmp_path / "t").write_text("x\ny\n")
    with pytest.raises(MTError, match=r"s has 3 lines but .*t has 2"):
        prepare(tiny_cfg(tmp_path, {"train_src": "s", "train_tgt": "t"}), tmp_path / "p", log=quiet)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(MTError, match="already holds files"):
        prepare(tiny_cfg(tmp_path, {"train_src": "s", "train_tgt": "s"}), tmp_path / "used", log=quiet)
    with pytest.raises(MTError, match="not a prepared corpus"):  # --force replaces only a prepared corpus
        prepare(tiny_cfg(tmp_path, {"train_src": "s", "train_tgt": "s"}), tmp_path / "used", log=quiet, force=True)


def test_reservoir_sample_bounds_the_vocabulary_input(tmp_path: Path) -> None:
    from mt.data.prepare import Reservoir

    r = Reservoir(100, seed=1)
    for start in range(0, 10_000, 700):
        r.add([str(i).encode() for i in range(start, min(start + 700, 10_000))])
    values = [int(x) for x in r.items]
    assert r.seen == 10_000 and len(values) == len(set(values)) == 100
    assert 3000 < np.mean(values) < 7000  # uniform over the stream, not its head
    again = Reservoir(100, seed=1)
    for start in range(0, 10_000, 700):
        again.add([str(i).encode() for i in range(start, min(start + 700, 10_000))])
    assert again.items == r.items


# ----------------------------------------------------------------------------------------------
# verification


@pytest.fixture()
def prepared(tmp_path: Path) -> tuple[Path, object]:
    src, tgt = write_pair(tmp_path, "a", synthetic.generate(200, seed=3))
    cfg = tiny_cfg(tmp_path, {"train_src": str(src), "train_tgt": str(tgt)}, {"size": 120})
    prepare(cfg, tmp_path / "prep", log=quiet)
    return tmp_path / "prep", cfg


def test_truncated_tampered_or_incomplete_directory_is_one_clear_error(prepared) -> None:
    root, cfg = prepared
    PreparedData.open(root)
    bin_ = root / "train.tgt.bin"
    data = bin_.read_bytes()
    bin_.write_bytes(data[:-2])
    with pytest.raises(MTError, match=r"train.tgt.bin: .* bytes, the manifest says .* \(truncated or changed\)"):
        PreparedData.open(root)
    bin_.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    with pytest.raises(MTError, match=r"train.tgt.bin: contents differ from the manifest"):
        PreparedData.open(root)
    bin_.write_bytes(data)
    PreparedData.open(root)
    idx = root / "train.src.idx"
    idx.write_bytes(idx.read_bytes()[:-8])
    with pytest.raises(MTError, match=r"train.src.idx: .*truncated"):
        PreparedData.open(root, verify=False)  # the header check alone catches it too
    (root / "manifest.json").unlink()
    with pytest.raises(MTError, match="not a prepared corpus"):
        PreparedData.open(root)


def test_changed_input_or_vocabulary_settings_are_refused(prepared) -> None:
    root, cfg = prepared
    check_prepared(PreparedData.open(root), cfg)
    with pytest.raises(MTError, match=r"prepared with vocab.size=120, the recipe says 99"):
        check_prepared(PreparedData.open(root), config_from_dict({"vocab": {"size": 99, "model_type": "word",
                                                                           "byte_fallback": False}}))
    src = Path(json.loads((root / "manifest.json").read_text())["inputs"][0]["path"])
    text = src.read_text()
    src.write_text(text.replace("a", "e", 1))  # same size, new contents
    with pytest.raises(MTError, match="changed since it was prepared"):
        check_prepared(PreparedData.open(root), cfg)
    src.write_text(text)  # back as it was (a new mtime, the same sha256): fine
    check_prepared(PreparedData.open(root), cfg)


# ----------------------------------------------------------------------------------------------
# batches from the memory map: weights, determinism, DDP shares


def two_corpora(n_a: int = 100, n_b: int = 300) -> tuple[TokenArray, TokenArray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, n_a + n_b)
    seqs = [list(range(4, 4 + n)) for n in lengths]
    return TokenArray.from_lists(seqs), TokenArray.from_lists(seqs[::-1])


def test_epoch_shares_formula() -> None:
    assert epoch_shares([100, 300], [1, 1]) == [100, 300]  # weight 1: every pair once
    assert epoch_shares([100, 300], [3, 1]) == [200, 200]
    # temperature 2: shares in proportion to sqrt(w n): sqrt(100) : sqrt(300)
    assert epoch_shares([100, 300], [1, 1], temperature=2) == [146, 254]
    assert epoch_shares([100, 300], [1, 1], temperature=1000) == [200, 200]


def test_weights_give_the_expected_proportions() -> None:
    src, tgt = two_corpora(100, 300)
    corpora = [(0, 100, 3.0), (100, 400, 1.0)]
    b = TokenBatcher(src, tgt, 200, seed=4, corpora=corpora)
    for epoch in range(3):
        pairs = np.concatenate(b.epoch_batches(epoch))
        from_a = pairs[pairs < 100]
        assert len(pairs) == 400 and len(from_a) == 200
        assert np.array_equal(np.bincount(from_a, minlength=100), np.full(100, 2))  # each twice
        assert len(np.unique(pairs[pairs >= 100])) == 200  # 200 of the 300, without repeats
    # temperature: over epochs, corpus A's share is 146 / 400 of every epoch; a random subset of
    # the big corpus changes per epoch, so every one of its pairs is seen within a few epochs
    t = TokenBatcher(src, tgt, 200, seed=4, corpora=[(0, 100, 1.0), (100, 400, 1.0)], temperature=2)
    seen = set()
    for epoch in range(6):
        pairs = np.concatenate(t.epoch_batches(epoch))
        share = np.mean(pairs < 100)
        assert abs(share - 146 / 400) < 1e-9
        seen |= set(pairs[pairs >= 100].tolist())
    assert len(seen) > 290


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch() -> None:
    src, tgt = two_corpora()
    a, b = TokenBatcher(src, tgt, 100, seed=3), TokenBatcher(src, tgt, 100, seed=3)
    b.epoch_batches(5)  # another epoch computed first changes nothing
    assert [x.tolist() for x in a.epoch_batches(1)] == [x.tolist() for x in b.epoch_batches(1)]
    assert [x.tolist() for x in a.epoch_batches(1)] != [x.tolist() for x in a.epoch_batches(2)]
    other = TokenBatcher(src, tgt, 100, seed=4)
    assert [x.tolist() for x in a.epoch_batches(1)] != [x.tolist() for x in other.epoch_batches(1)]
    # the budget holds, and greedily: the next pair in length order would not have fitted
    padded = np.maximum(src.lengths(), tgt.lengths()) + 1
    for batch in a.epoch_batches(0):
        assert len(batch) == 1 or len(batch) * padded[batch].max() <= 100
    sorted_batches = a.batches
    for batch, following in zip(sorted_batches, sorted_batches[1:]):
        assert (len(batch) + 1) * max(padded[batch].max(), padded[following[0]]) > 100
    assert sorted(np.concatenate(a.epoch_batches(0)).tolist()) == list(range(400))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_see_disjoint_batches(world: int) -> None:
    src, tgt = two_corpora()
    b = TokenBatcher(src, tgt, 100, seed=3, corpora=[(0, 100, 2.0), (100, 400, 1.0)])
    whole = b.epoch_batches(1)
    shares = [b.epoch_batches(1, rank, world) for rank in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(whole) // world
    keys = [{tuple(x.tolist()) for x in s} for s in shares]
    for i in range(world):
        for j in range(i + 1, world):
            assert not keys[i] & keys[j]
    # together: the epoch's batches (those left over by an uneven split excepted), each once
    together = sorted(k for s in keys for k in s)
    assert together == sorted({tuple(x.tolist()) for x in whole} - {tuple(x.tolist()) for x in whole[len(whole) - len(whole) % world:]})


def test_collate_from_the_memory_map_equals_collate_from_lists(prepared) -> None:
    from mt.data.batching import collate

    root, _ = prepared
    prep = PreparedData.open(root)
    b = TokenBatcher(prep.src, prep.tgt, 300, seed=1)
    for indices in b.epoch_batches(0)[:5]:
        want = collate([prep.src[i].tolist() for i in indices], [prep.tgt[i].tolist() for i in indices])
        got = b.collate(indices)
        for name in ("src", "src_lengths", "tgt_in", "tgt_out"):
            assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
        assert got.ntokens == want.ntokens


# ----------------------------------------------------------------------------------------------
# the command


def _mt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mt.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_mt_prepare_then_train_on_two_weighted_corpora(tmp_path: Path) -> None:
    write_pair(tmp_path, "big", synthetic.generate(200, seed=1))
    write_pair(tmp_path, "small", synthetic.generate(40, seed=2))
    write_pair(tmp_path, "valid", synthetic.generate(10, seed=3))
    (tmp_path / "recipe.yaml").write_text(
        "data:\n  corpus: files\n  data_dir: .\n  valid_src: valid.src\n  valid_tgt: valid.tgt\n  train:\n"
        "    - {src: big.src, tgt: big.tgt}\n    - {src: small.src, tgt: small.tgt, weight: 4, name: small}\n"
        "vocab: {size: 80, model_type: word, byte_fallback: false}\n"
        "model: {d_model: 16, heads: 2, enc_layers: 1, dec_layers: 1, ff_dim: 32}\n"
        "train: {max_steps: 3, batch_tokens: 200, valid_every: 3, log_every: 1, device: cpu}\n"
        "decode: {search: greedy}\n")
    r = _mt("prepare", "recipe.yaml", "--out", "prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "small: " in r.stderr and "pairs kept" in r.stderr
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert [c["name"] for c in manifest["corpora"]] == ["big.src", "small"]
    r = _mt("train", "recipe.yaml", "--run-dir", "run", "--set", "data.prepared=prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "per epoch: big.src" in r.stderr
    assert (tmp_path / "run" / "spm.model").read_bytes() == (tmp_path / "prep" / "spm.model").read_bytes()
    assert not (tmp_path / "run" / "prepared").exists()
    # a tampered prepared directory: one clear line
    bin_ = tmp_path / "prep" / "train.src.bin"
    bin_.write_bytes(bin_.read_bytes()[:-1])
    r = _mt("train", "--resume", "run", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("mt: error: ") and "truncated or changed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
