"""Writing files so that a failure never leaves a half-written one.

Temporary files and folders are renamed into place. They stay private (tempfile's 0600 and 0700)
while being written, and get the permissions a plain open() or mkdir() would have given just before
the rename (`publish`): the mode of the file being replaced, else the umask's. `Output` is the
output file of `mt translate` (stdout, a file, a device or a pipe).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from mt import MTError


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


def publish_replacing(folder: Path, target: Path, aside: Path) -> None:
    """publish a finished `folder` as `target`; what stood at `target` moves to `aside` first (the
    caller deletes it) and comes back if the move fails: never half-deleted, never lost."""
    if target.exists() or target.is_symlink():
        os.replace(target, aside)
    try:
        publish(folder, target)
    except OSError:
        if aside.exists() or aside.is_symlink():
            os.replace(aside, target)
        raise


# ----------------------------------------------------------------------------------------------
# atomic writes: a temporary file beside the target, fsync, rename


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (where the filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) for a temporary file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


# ----------------------------------------------------------------------------------------------
# output files (`mt translate -o`)


def resolve_link(path: Path) -> Path:
    """`path` with its symbolic links followed; a loop is an MTError."""
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise MTError(f"{path}: cannot follow the symbolic link ({e})") from None


def written_in_place(path: Path) -> bool:
    """Paths that must be opened and written, never renamed over: anything under /dev or /proc
    (/dev/null, /dev/stdout, /proc/self/fd/N: the last two may stand for a file the shell opened),
    and an existing path that is not a regular file (a named pipe)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    return path.exists() and not resolve_link(path).is_file()


def _output_target(path: Path) -> tuple[Path, bool]:
    """(the file an output to `path` replaces, whether it is written in place instead), or an
    MTError when it cannot be written."""
    if path.is_dir():
        raise MTError(f"{path}: is a directory")
    if written_in_place(path):
        if not os.access(path, os.W_OK):
            raise MTError(f"{path}: cannot write (permission denied)")
        return path, True
    target = resolve_link(path) if path.is_symlink() else path  # the link stays, its target is replaced
    if not target.parent.is_dir():
        raise MTError(f"{target.parent}: no such directory for the output file")
    if not os.access(target.parent, os.W_OK):
        raise MTError(f"{target}: cannot write (permission denied on {target.parent})")
    return target, False


def check_output_path(path: Path | None) -> None:
    """Fail before any work when `Output(path)` could not be opened (None: stdout)."""
    if path is not None:
        _output_target(path)


class Output:
    """stdout, or a file written under a temporary name and renamed on success only, so a failed
    run never leaves a half-written output file (nor destroys an existing one). A symbolic link is
    followed (its target is replaced, the link stays); a path that is not a regular file (/dev/null,
    a named pipe, /dev/stdout) is written to directly. Text is UTF-8 with \\n line ends."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.tmp: Path | None = None
        self.direct = False  # written in place (a device or a pipe), closed at the end
        if path is None:
            # input is read as UTF-8 whatever the locale says; the output is written the same way
            if hasattr(sys.stdout, "reconfigure") and (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
                sys.stdout.reconfigure(encoding="utf-8")
            self.stream: IO[str] = sys.stdout
            return
        self.path, self.direct = _output_target(path)
        try:
            if self.direct:  # appending: /dev/stdout may be a file the shell opened with >>
                self.stream = open(path, "a", encoding="utf-8", newline="\n")
                return
            fd, self.tmp = temp_file(self.path)
        except OSError as e:
            raise MTError(f"{path}: cannot write ({e.strerror})") from None
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text: str) -> None:
        self.stream.write(text)
        if self.tmp is None:
            self.stream.flush()  # output appears as it goes

    def commit(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            publish(self.tmp, self.path)
            self.tmp = None
        elif self.direct:
            self.stream.close()

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        elif self.direct:
            try:
                self.stream.close()
            except OSError:  # a reader that went away (a closed pipe)
                pass
