"""Known public corpora: fetch them into a folder, checked by sha256, from a mirror folder or the network.

Standard library only (urllib, gzip, zipfile). Every file lands in `dest` through a temporary file
in `dest` that is renamed only after its checksum matched, so `dest` never holds a partial or
unverified file under a corpus file name.

For each file `fetch` tries, in this order:
1. `dest/<name>` when it is already there with the right sha256 (kept, not touched);
2. `mirror/<name>` (or `mirror/<corpus folder>/<name>`, so the parent of several corpus folders works too);
3. the network, `<base_url>/<remote name>`.

    fetch("multi30k", Path("data/multi30k"), mirror=Path("../shared/data/multi30k"), langs=["en", "de"])
    multi30k_split_paths(Path("data/multi30k"), "en", "de")["train"]
    # -> (Path("data/multi30k/train.en.gz"), Path("data/multi30k/train.de.gz"))
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import sys
import types
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from mt import MTError
from mt.files import publish, temp_file

_CHUNK = 1 << 20

Log = Callable[[str], None]


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus, as it is stored in `dest`."""

    #: file name in `dest` and in a mirror folder, e.g. "train.de.gz"
    name: str
    #: the expected sha256, of the file itself or of its decompressed text (see `hash_of`)
    sha256: str
    #: languages whose text the file holds
    langs: tuple[str, ...]
    #: "file": sha256 of the stored bytes; "text": sha256 of the gunzipped content
    hash_of: Literal["file", "text"] = "file"
    #: file name under the corpus base URL ("" = same as `name`)
    remote: str = ""
    #: when the remote file is a zip archive: the member that holds the text (stored gzip-compressed)
    member: str = ""

    @property
    def remote_name(self) -> str:
        return self.remote or self.name

    @property
    def plain_name(self) -> str:
        """Name of the uncompressed text, accepted in a mirror when the check is on the text."""
        return self.name.removesuffix(".gz")


@dataclass(frozen=True)
class Corpus:
    name: str
    langs: tuple[str, ...]
    #: "directory" URL: a file is downloaded from f"{base_url}/{file.remote_name}"
    base_url: str
    #: folder name of this corpus inside a mirror that holds several corpora (shared/data/<folder>)
    mirror_folder: str
    files: tuple[CorpusFile, ...]
    #: one line for `mt data list`: what it is, where it comes from, its terms
    about: str


def _multi30k_files() -> tuple[CorpusFile, ...]:
    # sha256 of the upstream .gz files (multi30k/dataset, master, data/task1/raw/), byte for byte.
    # Source: shared/data/README.md, section "1. Multi30k", table "Files" (also shared/data/SHA256SUMS).
    table = {
        "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
        "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
        "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
        "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
        "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
        "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
        "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    }
    return tuple(CorpusFile(name, digest, (name.split(".")[-2],)) for name, digest in table.items())


# The d2l copy of the manythings.org/anki fra-eng export (2019-04-07). The zip itself differs between
# copies (re-packed), so the authoritative check is the sha256 of the decompressed fra.txt.
# Source: shared/data/README.md, section "2. Tatoeba English-French", table "Files".
_TATOEBA_TEXT_SHA256 = "0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104"

KNOWN_CORPORA: Mapping[str, Corpus] = types.MappingProxyType(
    {
        "multi30k": Corpus(
            name="multi30k",
            langs=("en", "de", "fr", "cs"),
            base_url="https://github.com/multi30k/dataset/raw/master/data/task1/raw",
            mirror_folder="multi30k",
            files=_multi30k_files(),
            about="Multi30k task 1 image captions: train 29000, valid 1014, test_2016_flickr 1000 lines; "
            "non-commercial research/education use (github.com/multi30k/dataset)",
        ),
        "tatoeba": Corpus(
            name="tatoeba",
            langs=("en", "fr"),
            base_url="http://d2l-data.s3-accelerate.amazonaws.com",
            mirror_folder="tatoeba-fra-eng",
            files=(
                CorpusFile(
                    "fra.txt.gz",
                    _TATOEBA_TEXT_SHA256,
                    ("en", "fr"),
                    hash_of="text",
                    remote="fra-eng.zip",
                    member="fra-eng/fra.txt",
                ),
            ),
            about="Tatoeba English<TAB>French pairs (the d2l fra-eng copy), 167130 lines, no split; "
            "CC BY 2.0, credit manythings.org/anki and tatoeba.org",
        ),
    }
)


def known_corpora_text() -> str:
    """'multi30k (en, de, fr, cs), tatoeba (en, fr)' for help texts and error messages."""
    return ", ".join(f"{c.name} ({', '.join(c.langs)})" for c in KNOWN_CORPORA.values())


def get_corpus(name: str) -> Corpus:
    corpus = KNOWN_CORPORA.get(name.strip().lower())
    if corpus is None:
        raise MTError(f"unknown corpus {name!r}; known corpora: {known_corpora_text()}")
    return corpus


def select_files(corpus: Corpus, langs: Iterable[str] | None = None) -> tuple[CorpusFile, ...]:
    """The files of `corpus` that hold at least one of `langs` (all files when None)."""
    if langs is None:
        return corpus.files
    wanted = {lang.strip().lower() for lang in langs if lang.strip()}
    if not wanted:
        raise MTError(f"no language given for {corpus.name} (choose from {', '.join(corpus.langs)})")
    unknown = sorted(wanted - set(corpus.langs))
    if unknown:
        raise MTError(
            f"{corpus.name} has no language {', '.join(unknown)} (it has {', '.join(corpus.langs)})"
        )
    return tuple(f for f in corpus.files if wanted & set(f.langs))


def multi30k_split_paths(dest: Path, src: str, tgt: str) -> dict[str, tuple[Path, Path]]:
    """(source, target) file paths of the Multi30k splits in `dest`: train, valid and test (test_2016_flickr).

    Only builds the paths; `fetch("multi30k", dest, langs=[src, tgt])` puts the files there.
    """
    langs = KNOWN_CORPORA["multi30k"].langs
    for lang in (src, tgt):
        if lang not in langs:
            raise MTError(f"multi30k has no language {lang!r} (it has {', '.join(langs)})")
    if src == tgt:
        raise MTError(f"source and target language are both {src!r}")
    splits = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    return {key: (dest / f"{stem}.{src}.gz", dest / f"{stem}.{tgt}.gz") for key, stem in splits.items()}


def tatoeba_path(dest: Path) -> Path:
    """The Tatoeba fra-eng pairs (`English<TAB>French` per line, gzip) as `fetch("tatoeba", dest)` stores them."""
    return dest / KNOWN_CORPORA["tatoeba"].files[0].name


def fetch(
    corpus: str,
    dest: Path,
    mirror: Path | None = None,
    langs: Iterable[str] | None = None,
    progress: bool = False,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Make sure `dest` holds the (verified) files of `corpus` for `langs`; returns their paths.

    `mirror`: a folder searched before the network (`mirror/<name>`, then `mirror/<corpus folder>/<name>`).
    `base_url`: where to download from instead of the corpus' upstream location (a directory URL).
    `progress`: report each file on stderr. Errors (checksum, network, files) raise MTError.
    """
    spec = get_corpus(corpus)
    files = select_files(spec, langs)
    if mirror is not None:
        mirror = Path(mirror)
        if not mirror.is_dir():
            raise MTError(f"mirror folder {mirror} does not exist (or is not a folder)")
    dest = Path(dest)
    _make_dest(dest)
    log: Log = _stderr_log if progress else _no_log
    url = (base_url or spec.base_url).rstrip("/")
    return [_fetch_file(f, spec, dest, mirror, url, timeout, log) for f in files]


def _make_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise MTError(f"destination {dest} exists and is not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MTError(f"could not create the destination folder {dest}: {e}") from e


# --- one file ------------------------------------------------------------------------------------


def _fetch_file(
    f: CorpusFile, corpus: Corpus, dest: Path, mirror: Path | None, base_url: str, timeout: float, log: Log
) -> Path:
    target = dest / f.name
    if target.is_file():
        if _digest(target, f) == f.sha256:
            log(f"{f.name}: already in {dest}, checksum ok")
            return target
        log(f"{f.name}: in {dest} but its checksum differs; fetching it again")
    source = _find_in_mirror(f, corpus, mirror) if mirror is not None else None
    if source is not None:
        _write_verified(target, f, _writer_for_mirror(source, f), origin=str(source))
        log(f"{f.name}: copied from {source}, checksum ok")
    else:
        _download_file(f, target, f"{base_url}/{f.remote_name}", timeout, log)
        log(f"{f.name}: downloaded, checksum ok")
    return target


def _find_in_mirror(f: CorpusFile, corpus: Corpus, mirror: Path) -> Path | None:
    names = [f.name]
    if f.hash_of == "text":
        names.append(f.plain_name)
    if f.member:
        names.append(f.remote_name)
    for folder in (mirror, mirror / corpus.mirror_folder):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _writer_for_mirror(source: Path, f: CorpusFile) -> Callable[[BinaryIO], None]:
    """How a mirror file becomes the stored file: copied as is, gzip-compressed, or extracted from a zip."""
    if source.name == f.name:
        return lambda out: _copy_file(source, out)
    if f.member and source.name == f.remote_name:
        return lambda out: _gzip_zip_member(source, f.member, out)
    return lambda out: _gzip_file(source, out)


def _download_file(f: CorpusFile, target: Path, url: str, timeout: float, log: Log) -> None:
    log(f"{f.name}: downloading {url} ...")
    if not f.member:
        _write_verified(target, f, lambda out: _download(url, out, timeout), origin=url)
        return
    archive = _temp_path(target.parent, f.remote_name)
    try:
        with open(archive, "wb") as out:
            _download(url, out, timeout)
        _write_verified(target, f, lambda out: _gzip_zip_member(archive, f.member, out, origin=url), origin=url)
    finally:
        archive.unlink(missing_ok=True)


# --- verified atomic writes ----------------------------------------------------------------------


def _write_verified(target: Path, f: CorpusFile, write: Callable[[BinaryIO], None], origin: str) -> None:
    """Write through a temp file next to `target`; rename it to `target` only when the sha256 matches."""
    tmp = _temp_path(target.parent, target.name)
    try:
        try:
            with open(tmp, "wb") as out:
                write(out)
        except OSError as e:
            raise MTError(f"could not write {target}: {e}") from e
        actual = _digest(tmp, f)
        if actual != f.sha256:
            what = "sha256 of the decompressed text" if f.hash_of == "text" else "sha256"
            raise MTError(
                f"checksum mismatch for {f.name} from {origin}: expected {what} {f.sha256}, got {actual}"
            )
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_path(folder: Path, name: str) -> Path:
    fd, path = temp_file(folder / name, suffix=".part")
    os.close(fd)
    return path


def _digest(path: Path, f: CorpusFile) -> str:
    """sha256 hex of the file (or of its gunzipped text); a description of the problem if unreadable."""
    h = hashlib.sha256()
    try:
        with (gzip.open(path, "rb") if f.hash_of == "text" else open(path, "rb")) as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        return f"an unreadable file ({type(e).__name__}: {e})"
    return h.hexdigest()


def _copy_file(source: Path, out: BinaryIO) -> None:
    with open(source, "rb") as fh:
        shutil.copyfileobj(fh, out, _CHUNK)


def _gzip_stream(stream: BinaryIO, out: BinaryIO) -> None:
    # mtime=0 and no file name: the same text always gives the same bytes
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=6, mtime=0) as gz:
        shutil.copyfileobj(stream, gz, _CHUNK)


def _gzip_file(source: Path, out: BinaryIO) -> None:
    with open(source, "rb") as fh:
        _gzip_stream(fh, out)


def _gzip_zip_member(archive: Path, member: str, out: BinaryIO, origin: str | None = None) -> None:
    where = origin or str(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise MTError(f"{where} has no member {member}")
            with zf.open(member) as fh:
                _gzip_stream(fh, out)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise MTError(f"{where} is not a valid zip archive ({e})") from e


# --- network -------------------------------------------------------------------------------------


def _download(url: str, out: BinaryIO, timeout: float) -> None:
    """Stream `url` into `out`; any network problem becomes one MTError line (write errors stay OSError)."""
    with _network_errors(url):
        response = urllib.request.urlopen(url, timeout=timeout)
    with response:
        while True:
            with _network_errors(url):
                chunk = response.read(_CHUNK)
            if not chunk:
                return
            out.write(chunk)


@contextmanager
def _network_errors(url: str) -> Iterator[None]:
    try:
        yield
    except urllib.error.HTTPError as e:
        raise _network_error(url, f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _network_error(url, str(e.reason)) from e
    except (http.client.HTTPException, OSError) as e:  # timeouts, resets, TLS errors
        raise _network_error(url, f"{type(e).__name__}: {e}") from e
    except ValueError as e:  # malformed URL, unknown scheme
        raise _network_error(url, str(e)) from e


def _network_error(url: str, reason: str) -> MTError:
    return MTError(f"could not download {url}: {reason}; use --mirror DIR with the files")


# --- progress ------------------------------------------------------------------------------------


def _stderr_log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _no_log(message: str) -> None:
    pass
