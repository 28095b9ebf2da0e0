"""Temporary files and folders that are renamed into place, with the permissions a plain open() or
mkdir() would have given (tempfile makes them private: 0600 and 0700, whatever the umask says)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def file_mode(replacing: Path | None = None) -> int:
    """The mode of the file being replaced if there is one, else 0o666 minus the umask."""
    if replacing is not None:
        try:
            return stat.S_IMODE(os.stat(replacing).st_mode)
        except OSError:
            pass
    return 0o666 & ~_umask()


def temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """(fd, name) of a new empty file beside `path`, to be renamed over it; it already has the mode
    `path` keeps (or gets) after the rename."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, file_mode(path))
    except OSError:  # a filesystem without modes: keep what it gave
        pass
    return fd, Path(name)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder in `parent`, to be renamed into place, with mkdir()'s mode."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        os.chmod(path, 0o777 & ~_umask())
    except OSError:
        pass
    return path
