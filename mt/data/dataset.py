"""A prepared corpus on disk: memory-mapped token ids, one flat array and one offsets array per side,
and the manifest that says what it was made from and lets a reader verify it.

Layout of a prepared directory (`mt prepare`, mt/data/prepare.py writes it)::

    manifest.json        inputs (path, size, sha256), vocabulary sha256, the recipe's data and
                         vocab settings, counts kept / dropped per rule, token counts, the corpora's
                         pair ranges, and the size and sha256 of every file below; written last
    spm.model            (or spm.src.model + spm.tgt.model with vocab.joint false)
    train.src.bin        every kept source sentence's ids, one after the other (uint16 when the
    train.tgt.bin        vocabulary has at most 65,536 pieces, uint32 otherwise), no eos
    train.src.idx        header + offsets: sentence i is bin[offsets[i]:offsets[i + 1]]
    train.tgt.idx

The .bin / .idx pair follows fairseq's MMapIndexedDataset: a flat token file read through a memory
map and a small index with a magic header; here the index holds int64 offsets (n + 1 of them)
instead of sizes and byte pointers. Index header, little endian, 32 bytes: magic b"MTIDX\\0\\0\\0",
version (uint64, 1), dtype code (uint8: 2 uint16, 4 uint32), 7 bytes padding, sentence count (uint64).
No token data is ever copied into Python objects: a batch reads its rows from the memory map.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mt import MTError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_MAGIC = b"MTIDX\x00\x00\x00"
_HEADER = struct.Struct("<8sQB7xQ")  # magic, version, dtype code, padding, count: 32 bytes
_DTYPES = {2: np.uint16, 4: np.uint32}


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class TokenArray:
    """Sentences of token ids as one flat array plus offsets (memory-mapped, or in memory)."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> "TokenArray":
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(tokens, offsets)

    @classmethod
    def open(cls, prefix: Path) -> "TokenArray":
        """Memory-map PREFIX.bin through the offsets in PREFIX.idx (sizes checked, not contents)."""
        idx, bin_ = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
        try:
            with open(idx, "rb") as f:
                head = f.read(_HEADER.size)
        except OSError as e:
            raise MTError(f"{idx}: cannot read ({e.strerror})") from None
        if len(head) < _HEADER.size:
            raise MTError(f"{idx}: truncated index (no header)")
        magic, version, code, count = _HEADER.unpack(head)
        if magic != _MAGIC or version != 1 or code not in _DTYPES:
            raise MTError(f"{idx}: not an mt token index (bad header)")
        if idx.stat().st_size != _HEADER.size + 8 * (count + 1):
            raise MTError(f"{idx}: truncated or damaged index ({idx.stat().st_size} bytes for {count} sentences)")
        offsets = np.memmap(idx, dtype="<i8", mode="r", offset=_HEADER.size, shape=(count + 1,))
        dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
        total = int(offsets[-1])
        if not bin_.is_file() or bin_.stat().st_size != total * dtype.itemsize:
            have = bin_.stat().st_size if bin_.is_file() else "no"
            raise MTError(f"{bin_}: truncated or damaged token file ({have} bytes, the index needs {total * dtype.itemsize})")
        tokens = np.memmap(bin_, dtype=dtype, mode="r", shape=(total,)) if total else np.zeros(0, dtype)
        return cls(tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def rows(self, indices: np.ndarray, pad: int, before: int | None = None, after: int | None = None) -> np.ndarray:
        """Sentences `indices` as a [B, W] int64 array padded with `pad`, with the token `before`
        prepended and / or `after` appended to each (W = longest + the added tokens, at least 1)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        shift = 1 if before is not None else 0
        width = max(int(lengths.max(initial=0)) + shift + (after is not None), 1)
        out = np.full((len(indices), width), pad, dtype=np.int64)
        cols = np.arange(width - shift - (after is not None))
        mask = cols[None, :] < lengths[:, None]
        out[:, shift : shift + len(cols)][mask] = self.tokens[(starts[:, None] + cols[None, :])[mask]]
        if before is not None:
            out[:, 0] = before
        if after is not None:
            out[np.arange(len(indices)), lengths + shift] = after
        return out


class TokenWriter:
    """Appends sentences to PREFIX.bin; `close()` writes PREFIX.idx. Hashes the files as it writes."""

    def __init__(self, prefix: Path, dtype: type) -> None:
        self.bin_path = prefix.with_name(prefix.name + ".bin")
        self.idx_path = prefix.with_name(prefix.name + ".idx")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.file = open(self.bin_path, "wb")
        self.hash = hashlib.sha256()
        self.lengths: list[np.ndarray] = []
        self.count = self.total = 0

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.lengths.append(np.asarray(lengths, dtype=np.int64))
        self.count += len(lengths)
        self.total += len(tokens)

    def close(self) -> dict[str, dict[str, Any]]:
        """Finish both files; returns {file name: {bytes, sha256}} for the manifest."""
        self.file.close()
        offsets = np.zeros(self.count + 1, dtype="<i8")
        if self.count:
            np.cumsum(np.concatenate(self.lengths), out=offsets[1:])
        self.lengths = []
        code = {np.dtype(v): k for k, v in _DTYPES.items()}[np.dtype(self.dtype.type)]
        idx = _HEADER.pack(_MAGIC, 1, code, self.count) + offsets.tobytes()
        self.idx_path.write_bytes(idx)
        return {
            self.bin_path.name: {"bytes": self.bin_path.stat().st_size, "sha256": self.hash.hexdigest()},
            self.idx_path.name: {"bytes": len(idx), "sha256": hashlib.sha256(idx).hexdigest()},
        }

    def abort(self) -> None:
        self.file.close()


class PreparedData:
    """An opened prepared directory: its manifest and the two memory-mapped sides."""

    def __init__(self, root: Path, manifest: dict[str, Any], src: TokenArray, tgt: TokenArray) -> None:
        self.root, self.manifest, self.src, self.tgt = root, manifest, src, tgt

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "PreparedData":
        """Open a prepared directory; with `verify`, every file's size and sha256 must match the
        manifest (a truncated, missing or changed file is one clear error)."""
        root = Path(root)
        manifest = read_manifest(root)
        if verify:
            verify_files(root, manifest)
        src, tgt = TokenArray.open(root / "train.src"), TokenArray.open(root / "train.tgt")
        rows = manifest["pairs"] * manifest.get("segmentations", 1)  # sampled segmentations: rows per pair
        if len(src) != len(tgt) or len(src) != rows:
            raise MTError(f"{root}: the two sides hold {len(src)} and {len(tgt)} sentences, the manifest "
                          f"{rows} ({manifest['pairs']} pairs); prepare it again")
        return cls(root, manifest, src, tgt)

    @property
    def corpora(self) -> list[dict[str, Any]]:
        """[{name, weight, start, end}]: corpus k's pairs are start .. end - 1."""
        return self.manifest["corpora"]

    def vocab_files(self) -> list[Path]:
        return [self.root / name for name in self.manifest["vocab"]]


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise MTError(f"{root}: no such prepared directory")
    if not path.is_file():
        raise MTError(f"{root}: not a prepared corpus (no {MANIFEST}: `mt prepare` did not finish there)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MTError(f"{path}: damaged manifest (not JSON); prepare the corpus again") from None
    need = ("format", "pairs", "files", "vocab", "corpora", "inputs", "settings")
    if not isinstance(manifest, dict) or any(k not in manifest for k in need):
        raise MTError(f"{path}: not an mt manifest (needs {', '.join(need)})")
    if manifest["format"] != FORMAT_VERSION:
        raise MTError(f"{path}: prepared-corpus format {manifest['format']}, this mt reads {FORMAT_VERSION}; prepare it again")
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    for name, expect in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise MTError(f"{root}: {name} is missing; prepare the corpus again")
        size = path.stat().st_size
        if size != expect["bytes"]:
            raise MTError(f"{path}: {size} bytes, the manifest says {expect['bytes']} (truncated or changed); "
                          "prepare the corpus again")
        if sha256_file(path) != expect["sha256"]:
            raise MTError(f"{path}: contents differ from the manifest (sha256); the file was changed after "
                          "`mt prepare`: prepare the corpus again")
