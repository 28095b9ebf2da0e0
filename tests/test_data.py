import gzip
from pathlib import Path

import pytest
import torch

from mt import MTError
from mt.config import DataConfig
from mt.data.batching import TokenBatcher, collate, filter_pairs, token_batches
from mt.data.text import grouped_split, load_corpus, read_lines, read_parallel
from mt.data.vocab import BOS_ID, EOS_ID, PAD_ID

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_plain_gzip_crlf_and_bom(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_bytes(b"\xef\xbb\xbfhello\r\nw\xc3\xb6rld\n\nlast")
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_lines(plain) == ["hello", "wörld", "", "last"]
    assert read_lines(gz) == read_lines(plain)


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\nstill ok\nbro\xffken\n")
    with pytest.raises(MTError, match=r"bad.txt:3: invalid UTF-8 \(byte 0xff at column 4\)"):
        read_lines(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(MTError, match="no such file"):
        read_lines(tmp_path / "nope.txt")
    with pytest.raises(MTError, match="is a directory"):
        read_lines(tmp_path)


def test_parallel_checks(tmp_path):
    (tmp_path / "s").write_text("a\nb\n")
    (tmp_path / "t").write_text("x\n")
    (tmp_path / "e").write_text("")
    with pytest.raises(MTError, match="has 2 lines but .* has 1"):
        read_parallel(tmp_path / "s", tmp_path / "t")
    with pytest.raises(MTError, match="empty corpus"):
        read_parallel(tmp_path / "e", tmp_path / "e")


def test_collate_shapes_and_specials():
    b = collate([[5, 6, 7], [8]], [[9], [10, 11]])
    assert b.src.tolist() == [[5, 6, 7, EOS_ID], [8, EOS_ID, PAD_ID, PAD_ID]]
    assert b.src_lengths.tolist() == [4, 2]
    assert b.tgt_in.tolist() == [[BOS_ID, 9, PAD_ID], [BOS_ID, 10, 11]]
    assert b.tgt_out.tolist() == [[9, EOS_ID, PAD_ID], [10, 11, EOS_ID]]
    assert b.ntokens == 5


def test_token_batches_respect_budget():
    lengths = [3, 10, 4, 7, 7, 2, 30]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = token_batches(lengths, 20, order)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 20


def test_batcher_is_deterministic_and_shuffles_per_epoch():
    g = torch.Generator().manual_seed(0)
    src = [list(range(4, 4 + int(n))) for n in torch.randint(1, 20, (200,), generator=g)]
    tgt = [list(range(4, 4 + int(n))) for n in torch.randint(1, 20, (200,), generator=g)]
    a, b = TokenBatcher.from_lists(src, tgt, 100, seed=3), TokenBatcher.from_lists(src, tgt, 100, seed=3)

    def plain(batches):
        return [x.tolist() for x in batches]

    assert plain(a.epoch_batches(0)) == plain(b.epoch_batches(0))
    assert plain(a.epoch_batches(0)) != plain(a.epoch_batches(1))
    # every sentence exactly once per epoch; padding is limited by length bucketing
    flat = sorted(i for batch in a.epoch_batches(1) for i in batch.tolist())
    assert flat == list(range(200))
    real = sum(len(t) + 1 for t in tgt)
    padded = sum(a.collate(batch).tgt_out.numel() for batch in a.batches)
    assert real / padded > 0.8
    # ranks of a distributed run get disjoint, equally many batches
    r0, r1 = a.epoch_batches(2, 0, 2), a.epoch_batches(2, 1, 2)
    assert len(r0) == len(r1)
    assert not {tuple(x) for x in plain(r0)} & {tuple(x) for x in plain(r1)}


def test_filter_pairs():
    s, t, dropped = filter_pairs([[4], [], [4] * 9, [4, 5]], [[5], [5], [5], [5] * 3], max_len=8)
    assert (s, t, dropped) == ([[4], [4, 5]], [[5], [5] * 3], 2)


def test_grouped_split_keeps_translations_of_one_source_together():
    src = [f"s{i // 3}" for i in range(300)]
    tgt = [f"t{i}" for i in range(300)]
    parts = grouped_split(src, tgt, valid=30, test=30, seed=1)
    seen = {name: set(p[0]) for name, p in parts.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["valid"]
    assert sum(len(p[0]) for p in parts.values()) == 300
    assert len(parts["valid"][0]) >= 30


def test_synthetic_corpus():
    c = load_corpus(DataConfig(corpus="synthetic", synthetic_train=50, synthetic_valid=5, synthetic_test=5))
    assert [len(c[k][0]) for k in ("train", "valid", "test")] == [50, 5, 5]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (offline corpora) not present")
def test_multi30k_and_tatoeba_through_the_mirror(tmp_path):
    cfg = DataConfig(corpus="multi30k", data_dir=str(tmp_path / "m30k"), mirror=str(SHARED / "multi30k"))
    c = load_corpus(cfg)
    assert [len(c[k][0]) for k in ("train", "valid", "test")] == [29000, 1014, 1000]
    assert c["test"][0][0].startswith("A man in an orange hat")
    cfg = DataConfig(corpus="tatoeba", data_dir=str(tmp_path / "tat"), mirror=str(SHARED), src_lang="en", tgt_lang="fr")
    c = load_corpus(cfg)
    assert sum(len(c[k][0]) for k in c) == 167130
    assert len(c["test"][0]) >= 1000


def test_corpus_files_resolve_from_cwd_then_data_dir(tmp_path: Path, monkeypatch) -> None:

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.src").write_text("x y\n", encoding="utf-8")
    (tmp_path / "d" / "a.tgt").write_text("u v\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(corpus="files", data_dir="d", train_src="a.src", train_tgt="a.tgt")
    assert load_corpus(cfg)["train"] == (["x y"], ["u v"])
    with pytest.raises(MTError, match=r"nope\.src: no such file .*data_dir d"):
        load_corpus(DataConfig(corpus="files", data_dir="d", train_src="nope.src", train_tgt="a.tgt"))
