"""Temporary files and folders that are renamed into place. They stay private (tempfile's 0600 and
0700) while being written, and get the permissions a plain open() or mkdir() would have given
just before the rename (`publish`): the mode of the file being replaced, else the umask's."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would change it for every thread a moment)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
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
    """(fd, name) of a new empty private file beside `path`, to be written, then `publish`ed over it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(name)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty private folder in `parent`, to be filled, then `publish`ed."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def publish(tmp: Path, target: Path) -> None:
    """Give `tmp` its final mode (the replaced file's, else the umask's; mkdir's for a folder) and
    rename it to `target`."""
    mode = (0o777 & ~_umask()) if tmp.is_dir() else file_mode(target)
    try:
        os.chmod(tmp, mode)
    except OSError:  # a filesystem without modes: keep what it gave
        pass
    os.replace(tmp, target)
