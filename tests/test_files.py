"""mt.files: temporary files and folders renamed into place keep the permissions a plain open() or
mkdir() would give; Output writes UTF-8 and never renames over what is not a file."""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from mt import MTError
from mt.files import Output, check_output_path, file_mode, publish, temp_dir, temp_file


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_published_files_follow_the_umask_and_stay_private_while_written(tmp_path: Path, umask_027: int) -> None:
    fd, tmp = temp_file(tmp_path / "out.txt")
    os.close(fd)
    assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.")
    assert _mode(tmp) == 0o600  # private (and writable) while being written
    publish(tmp, tmp_path / "out.txt")
    assert _mode(tmp_path / "out.txt") == 0o640  # 0o666 & ~0o027, what open() would give
    d = temp_dir(tmp_path, ".step_1.")
    assert _mode(d) == 0o700
    publish(d, tmp_path / "step_1")
    assert _mode(tmp_path / "step_1") == 0o750  # mkdir's 0o777 & ~0o027


def test_published_file_takes_the_mode_of_the_file_it_replaces(tmp_path: Path, umask_027: int) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    target.chmod(0o444)  # read-only: the replacement is still written (as 0600), then made 0444
    assert file_mode(target) == 0o444
    fd, tmp = temp_file(target)
    with os.fdopen(fd, "w") as f:
        f.write("new\n")
    publish(tmp, target)
    assert target.read_text() == "new\n" and _mode(target) == 0o444


def test_umask_is_read_without_changing_it(umask_027: int) -> None:
    from mt.files import _umask

    assert _umask() == 0o027
    assert os.umask(0o027) == 0o027  # still what the fixture set


def test_output_file_replaced_keeps_its_mode(tmp_path: Path, umask_027: int) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    target.chmod(0o644)
    out = Output(target)
    out.write("new\n")
    out.commit()
    assert target.read_text() == "new\n" and _mode(target) == 0o644
    fresh = tmp_path / "fresh.txt"
    out = Output(fresh)
    out.write("x\n")
    out.commit()
    assert _mode(fresh) == 0o640


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    check_output_path(link)
    out = Output(link)
    out.write("new\n")
    out.commit()
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]


def test_output_to_a_named_pipe_writes_into_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    check_output_path(fifo)
    out = Output(fifo)
    out.write("one\n")
    out.write("two\n")
    out.commit()
    reader.join(10)
    assert got == [b"one\ntwo\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the pipe was replaced by a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_output_to_dev_stdout_appends_to_the_file_the_shell_opened(tmp_path: Path) -> None:
    """`mt translate -o /dev/stdout >> log`: /dev/stdout stands for log; it is written, in append
    mode, never renamed over (which would replace log and lose what it held)."""
    import subprocess

    log = tmp_path / "log.txt"
    log.write_text("kept\n")
    code = ("import sys; from pathlib import Path; from mt.files import Output, check_output_path; "
            "check_output_path(Path('/dev/stdout')); o = Output(Path('/dev/stdout')); o.write('new\\n'); o.commit()")
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=60)
    assert log.read_text() == "kept\nnew\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]


def test_output_through_a_symlink_loop_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(MTError, match="symbolic link"):
        check_output_path(tmp_path / "a")
    with pytest.raises(MTError, match="symbolic link"):
        Output(tmp_path / "a")


def test_output_to_dev_null(tmp_path: Path) -> None:
    if not os.path.exists(os.devnull) or not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        pytest.skip("no /dev/null character device")
    out = Output(Path(os.devnull))
    out.write("discarded\n")
    out.commit()
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    out = Output(Path(os.devnull))
    out.write("discarded\n")
    out.abort()
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_output_failed_run_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("precious\n")
    out = Output(target)
    out.write("half\n")
    out.abort()
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_stdout_is_utf8_whatever_the_locale(monkeypatch) -> None:
    raw = io.BytesIO()
    latin1 = io.TextIOWrapper(raw, encoding="latin-1", newline="\n")
    monkeypatch.setattr(sys, "stdout", latin1)
    out = Output(None)
    out.write("東京 ⁇ café\n")
    out.commit()
    latin1.flush()
    assert raw.getvalue().decode("utf-8") == "東京 ⁇ café\n"


def test_output_refuses_a_directory_and_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MTError, match="is a directory"):
        Output(tmp_path)
    with pytest.raises(MTError, match="no such directory"):
        check_output_path(tmp_path / "nope" / "out.txt")


def test_text_files_are_written_without_torch(tmp_path: Path) -> None:
    """save_config, the attention plot's module and `mt data synthetic` write through mt.files: no
    torch, no safetensors (seconds of start-up) for a YAML or text file."""
    import subprocess

    code = f"""
import sys
from pathlib import Path
from mt.config import Config, save_config
import mt.decode.plot
save_config(Config(), Path({str(tmp_path)!r}) / "config.yaml")
sys.argv = ["mt", "data", "synthetic", "--dest", {str(tmp_path / "syn")!r}, "--train", "5", "--valid", "2", "--test", "2"]
from mt.cli.main import main
try:
    main()
finally:
    print(sorted(m for m in ("torch", "safetensors") if m in sys.modules), file=sys.stderr)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == [
        f"{split}.{side}" for split in ("test", "train", "valid") for side in ("src", "tgt")]
