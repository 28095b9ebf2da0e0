"""Parallel text: reading and validating UTF-8 lines (plain or .gz), and resolving the corpora a
recipe names. No torch: the CLI reads text through this module before it imports anything heavy."""

from __future__ import annotations

import gzip
import random
import zlib
from pathlib import Path
from typing import IO, Iterator

from mt import MTError
from mt.config import DataConfig

#: a line longer than this (in bytes, line end included) is refused by every reader: a file without
#: line ends would otherwise be read into memory whole before anything could be said about it
MAX_LINE_BYTES = 4 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# reading


def open_binary(path: Path) -> IO[bytes]:
    """Open a plain or gzip file (detected by its magic bytes) for binary reading."""
    if path.is_dir():
        raise MTError(f"{path}: is a directory, not a text file")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise MTError(f"{path}: no such file") from None
    except PermissionError:
        raise MTError(f"{path}: permission denied") from None
    except OSError as e:
        raise MTError(f"{path}: cannot open ({e.strerror})") from None
    if f.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def decode_line(raw: bytes, name: str, lineno: int) -> str:
    """One line of bytes -> str without its line end (\\n or \\r\\n); clear error on bad UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MTError(f"{name}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if text.startswith("\ufeff") and lineno == 1:
        text = text[1:]
    return text


def iter_lines(stream: IO[bytes], name: str, max_bytes: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Decoded lines of a binary stream; a line over max_bytes is an error, found after reading
    max_bytes of it (not the whole line)."""
    lineno = 0
    try:
        while raw := stream.readline(max_bytes + 1):
            lineno += 1
            if len(raw) > max_bytes:
                raise MTError(f"{name}:{lineno}: line longer than {max_bytes} bytes")
            yield decode_line(raw, name, lineno)
    except (gzip.BadGzipFile, EOFError, OSError, zlib.error) as e:
        raise MTError(f"{name}: cannot read ({e})") from None


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (plain or .gz), without line ends."""
    path = Path(path)
    with open_binary(path) as f:
        return list(iter_lines(f, str(path)))


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if not src:
        raise MTError(f"{src_path}: empty corpus (no lines)")
    if len(src) != len(tgt):
        raise MTError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: a parallel corpus needs one line each")
    return src, tgt


def read_tsv_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """`source<TAB>target[<TAB>...]` lines (the Tatoeba / manythings format)."""
    src, tgt = [], []
    for i, line in enumerate(read_lines(path), 1):
        cols = line.split("\t")
        if len(cols) < 2:
            raise MTError(f"{path}:{i}: expected source<TAB>target")
        src.append(cols[0])
        tgt.append(cols[1])
    if not src:
        raise MTError(f"{path}: empty corpus (no lines)")
    return src, tgt


# ----------------------------------------------------------------------------------------------
# corpora

Split = tuple[list[str], list[str]]


def grouped_split(src: list[str], tgt: list[str], valid: int, test: int, seed: int) -> dict[str, Split]:
    """Random valid/test/train split that keeps all translations of one source sentence together."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(src):
        groups.setdefault(s, []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    out: dict[str, list[int]] = {"valid": [], "test": [], "train": []}
    for key in keys:
        name = "valid" if len(out["valid"]) < valid else "test" if len(out["test"]) < test else "train"
        out[name].extend(groups[key])
    return {name: ([src[i] for i in sorted(idx)], [tgt[i] for i in sorted(idx)]) for name, idx in out.items()}


def resolve_path(cfg: DataConfig, name: str | None) -> Path | None:
    """A corpus file named by the recipe: as given, or under data.data_dir."""
    if name is None:
        return None
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    under = Path(cfg.data_dir) / p
    if not under.exists():
        raise MTError(f"{name}: no such file (looked for it from the current directory and under "
                      f"data.data_dir {cfg.data_dir})")
    return under


def load_corpus(cfg: DataConfig, seed: int = 1, splits: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, Split]:
    """The train / valid / test splits named by the recipe (valid and test may be absent); files are
    read for the `splits` asked for only (the generated and split corpora are made whole)."""
    if cfg.corpus == "synthetic":
        from mt.data import synthetic

        parts = synthetic.splits(
            cfg.synthetic_train, cfg.synthetic_valid, cfg.synthetic_test, cfg.synthetic_seed, cfg.synthetic_max_clauses
        )
        return {k: ([s for s, _ in v], [t for _, t in v]) for k, v in parts.items() if v}
    if cfg.corpus == "multi30k":
        from mt.data import download

        dest = Path(cfg.data_dir)
        download.fetch("multi30k", dest, Path(cfg.mirror) if cfg.mirror else None, langs=[cfg.src_lang, cfg.tgt_lang])
        paths = download.multi30k_split_paths(dest, cfg.src_lang, cfg.tgt_lang)
        return {name: read_parallel(s, t) for name, (s, t) in paths.items() if name in splits}
    if cfg.corpus == "tatoeba":
        from mt.data import download

        dest = Path(cfg.data_dir)
        (path,) = download.fetch("tatoeba", dest, Path(cfg.mirror) if cfg.mirror else None)
        en, fr = read_tsv_pairs(path)
        src, tgt = (en, fr) if (cfg.src_lang, cfg.tgt_lang) == ("en", "fr") else (fr, en)
        if {cfg.src_lang, cfg.tgt_lang} != {"en", "fr"}:
            raise MTError(f"the tatoeba corpus is English-French, not {cfg.src_lang}-{cfg.tgt_lang}")
        return grouped_split(src, tgt, cfg.valid_size, cfg.test_size, seed)
    out = {}
    for name in splits:
        src, tgt = getattr(cfg, f"{name}_src"), getattr(cfg, f"{name}_tgt")
        if src and tgt:
            out[name] = read_parallel(resolve_path(cfg, src), resolve_path(cfg, tgt))
    return out
