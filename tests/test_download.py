"""mt.data.download and `mt data`: mirror copies, checksums, atomic writes, local-HTTP downloads, CLI errors."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mt import MTError
from mt.data.download import KNOWN_CORPORA, fetch, multi30k_split_paths, tatoeba_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MULTI30K = SHARED_DATA / "multi30k"
TATOEBA = SHARED_DATA / "tatoeba-fra-eng"
TATOEBA_TEXT_SHA256 = "0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104"
EN_DE = [f"{split}.{lang}.gz" for split in ("train", "val", "test_2016_flickr") for lang in ("en", "de")]

needs_mirror = pytest.mark.skipif(
    not (MULTI30K.is_dir() and TATOEBA.is_dir()),
    reason=f"no offline corpus mirror at {SHARED_DATA} (shared/data next to the repository)",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_sha256(name: str) -> str:
    return next(f.sha256 for f in KNOWN_CORPORA["multi30k"].files if f.name == name)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


def copy_files(names: list[str], src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return dst


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): a local HTTP server on 127.0.0.1 serving `folder`."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A localhost URL nobody listens on: connecting fails at once (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- library: mirror -----------------------------------------------------------------------------


@needs_mirror
def test_multi30k_from_mirror(tmp_path: Path) -> None:
    dest = tmp_path / "multi30k"
    paths = fetch("multi30k", dest, mirror=MULTI30K, langs=["en", "de"])
    assert [p.name for p in paths] == EN_DE
    assert sorted(p.name for p in dest.iterdir()) == sorted(EN_DE)
    for path in paths:
        assert sha256(path) == expected_sha256(path.name) == sha256(MULTI30K / path.name)
    splits = multi30k_split_paths(dest, "en", "de")
    assert splits["test"] == (dest / "test_2016_flickr.en.gz", dest / "test_2016_flickr.de.gz")
    assert set(splits) == {"train", "valid", "test"}
    assert all(p.is_file() for pair in splits.values() for p in pair)


@needs_mirror
def test_mirror_parent_folder_is_searched_too(tmp_path: Path) -> None:
    paths = fetch("multi30k", tmp_path / "d", mirror=SHARED_DATA, langs=["cs"])
    assert [p.name for p in paths] == ["train.cs.gz", "val.cs.gz", "test_2016_flickr.cs.gz"]


@needs_mirror
def test_tatoeba_from_mirror(tmp_path: Path) -> None:
    paths = fetch("tatoeba", tmp_path / "t", mirror=TATOEBA)
    assert paths == [tatoeba_path(tmp_path / "t")]
    with gzip.open(paths[0], "rb") as fh:
        text = fh.read()
    assert hashlib.sha256(text).hexdigest() == TATOEBA_TEXT_SHA256
    assert text.startswith(b"Go.\tVa")


@needs_mirror
def test_tatoeba_from_plain_text_in_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with gzip.open(TATOEBA / "fra.txt.gz", "rb") as src, open(mirror / "fra.txt", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (path,) = fetch("tatoeba", tmp_path / "t", mirror=mirror)
    with gzip.open(path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == TATOEBA_TEXT_SHA256


@needs_mirror
def test_corrupted_mirror_file_raises_and_leaves_nothing(tmp_path: Path) -> None:
    mirror = copy_files(["train.en.gz"], MULTI30K, tmp_path / "mirror")
    flip_byte(mirror / "train.en.gz")
    dest = tmp_path / "dest"
    with pytest.raises(MTError) as err:
        fetch("multi30k", dest, mirror=mirror, langs=["en"])
    message = str(err.value)
    assert "train.en.gz" in message and expected_sha256("train.en.gz") in message
    assert sha256(mirror / "train.en.gz") in message
    assert "\n" not in message
    assert list(dest.iterdir()) == []


@needs_mirror
def test_corrupted_tatoeba_text_raises(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with gzip.open(TATOEBA / "fra.txt.gz", "rb") as fh:
        text = bytearray(fh.read())
    text[10] ^= 0x01
    with gzip.open(mirror / "fra.txt.gz", "wb") as fh:
        fh.write(bytes(text))
    with pytest.raises(MTError, match=f"fra.txt.gz.*expected sha256 of the decompressed text {TATOEBA_TEXT_SHA256}"):
        fetch("tatoeba", tmp_path / "t", mirror=mirror)
    assert list((tmp_path / "t").iterdir()) == []


@needs_mirror
def test_valid_file_in_dest_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch("multi30k", dest, mirror=MULTI30K, langs=["en"])
    target = dest / "train.en.gz"
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = target.stat().st_mtime_ns
    # neither the mirror nor the network is needed any more: a closed port would fail loudly
    fetch("multi30k", dest, langs=["en"], base_url=closed_port_url())
    assert target.stat().st_mtime_ns == before


@needs_mirror
def test_invalid_file_in_dest_is_replaced(tmp_path: Path) -> None:
    dest = copy_files(["val.de.gz"], MULTI30K, tmp_path / "dest")
    flip_byte(dest / "val.de.gz")
    fetch("multi30k", dest, mirror=MULTI30K, langs=["de"])
    assert sha256(dest / "val.de.gz") == expected_sha256("val.de.gz")


def test_unknown_corpus_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="unknown corpus 'wmt14'.*multi30k.*tatoeba"):
        fetch("wmt14", tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_language_and_bad_split_pairs(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="multi30k has no language xx"):
        fetch("multi30k", tmp_path, langs=["en", "xx"])
    with pytest.raises(MTError, match="no language 'ja'"):
        multi30k_split_paths(tmp_path, "en", "ja")
    with pytest.raises(MTError, match="both 'en'"):
        multi30k_split_paths(tmp_path, "en", "en")


def test_missing_mirror_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="mirror folder .*does not exist"):
        fetch("multi30k", tmp_path / "dest", mirror=tmp_path / "nope", langs=["en"])


# --- library: network (local HTTP server) --------------------------------------------------------


@needs_mirror
def test_download_multi30k_over_http(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, url = http_dir
    copy_files(EN_DE, MULTI30K, root)
    dest = tmp_path / "dest"
    paths = fetch("multi30k", dest, langs=["de", "en"], base_url=url)
    assert [p.name for p in paths] == EN_DE
    for path in paths:
        assert sha256(path) == expected_sha256(path.name)
    assert leftovers(dest) == []


@needs_mirror
def test_download_with_bad_checksum_leaves_no_partial_file(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, url = http_dir
    names = ["train.en.gz", "val.en.gz", "test_2016_flickr.en.gz"]
    copy_files(names, MULTI30K, root)
    flip_byte(root / "val.en.gz")
    dest = tmp_path / "dest"
    with pytest.raises(MTError, match=f"checksum mismatch for val.en.gz from {url}/val.en.gz"):
        fetch("multi30k", dest, langs=["en"], base_url=url)
    assert sorted(p.name for p in dest.iterdir()) == ["train.en.gz"]  # verified before the bad one


def test_download_http_404_is_one_line_error(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    _, url = http_dir
    with pytest.raises(MTError) as err:
        fetch("multi30k", tmp_path / "dest", langs=["fr"], base_url=url)
    message = str(err.value)
    assert message.startswith(f"could not download {url}/train.fr.gz: HTTP 404")
    assert "--mirror" in message and "\n" not in message
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_connection_refused(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="could not download http://127.0.0.1:.*use --mirror DIR"):
        fetch("multi30k", tmp_path / "dest", langs=["en"], base_url=closed_port_url())


@needs_mirror
def test_download_tatoeba_zip_over_http(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, url = http_dir
    with gzip.open(TATOEBA / "fra.txt.gz", "rb") as fh:
        text = fh.read()
    with zipfile.ZipFile(root / "fra-eng.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("fra-eng/_about.txt", "about")
        zf.writestr("fra-eng/fra.txt", text)
    dest = tmp_path / "dest"
    (path,) = fetch("tatoeba", dest, base_url=url)
    with gzip.open(path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == TATOEBA_TEXT_SHA256
    assert sorted(p.name for p in dest.iterdir()) == ["fra.txt.gz"]  # the zip is gone too


def test_download_tatoeba_zip_with_wrong_text(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, url = http_dir
    with zipfile.ZipFile(root / "fra-eng.zip", "w") as zf:
        zf.writestr("fra-eng/fra.txt", "Go.\tVa !\n")
    dest = tmp_path / "dest"
    with pytest.raises(MTError, match="checksum mismatch for fra.txt.gz"):
        fetch("tatoeba", dest, base_url=url)
    assert list(dest.iterdir()) == []


# --- CLI -----------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mt.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@needs_mirror
def test_cli_get_from_mirror(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    result = run_cli("data", "get", "multi30k", "--dest", str(dest), "--mirror", str(MULTI30K), "--langs", "en,de")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(EN_DE)
    assert str(dest / "train.de.gz") in result.stdout.splitlines()
    assert "copied from" in result.stderr


def test_cli_without_mirror_or_network_fails_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    dest = tmp_path / "d"
    args = ("data", "get", "multi30k", "--dest", str(dest), "--mirror", str(empty), "--langs", "en,de", "-q")
    result = run_cli(*args, env={"MT_MULTI30K_URL": closed_port_url()})
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mt: error: could not download http://127.0.0.1:"), result.stderr
    assert list(dest.iterdir()) == []


def test_cli_missing_mirror_folder_and_unknown_corpus(tmp_path: Path) -> None:
    env = {"MT_MULTI30K_URL": closed_port_url()}
    result = run_cli("data", "get", "multi30k", "--dest", str(tmp_path / "d"), "--mirror", str(tmp_path / "no"), env=env)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [f"mt: error: mirror folder {tmp_path / 'no'} does not exist (or is not a folder)"]
    assert not (tmp_path / "d").exists()
    result = run_cli("data", "get", "europarl", "--dest", str(tmp_path / "d"))
    assert result.returncode != 0
    assert result.stderr.startswith("mt: error: unknown corpus 'europarl'") and result.stderr.count("\n") == 1


def test_cli_list() -> None:
    result = run_cli("data", "list")
    assert result.returncode == 0, result.stderr
    assert "multi30k" in result.stdout and "tatoeba" in result.stdout and "MT_MULTI30K_URL" in result.stdout
