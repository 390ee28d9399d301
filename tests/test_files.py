"""Safe saves (xpcnn.files): through symlinks, never over devices, FIFOs or directories, stale temporary files
removed, disk errors naming the file, one writer per path; and the same rules in `xpcnn train`'s outputs."""
import errno
import os
import stat
import tempfile
import time

import pytest

from xpcnn.cli import main
from xpcnn.errors import InputValueError
from xpcnn.files import append_line, atomic_write, output_lock, remove_stale_temps

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture
def no_replace(monkeypatch):
    """Any attempt to create a temporary file or rename over a path fails the test instead of happening (so a bug
    can never replace /dev/null or /dev/full: the tests run as root)."""
    def refuse(*a, **k):
        raise AssertionError(f"a save was attempted: {a} {k}")
    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_writes_through_a_symlink_to_its_target(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    real = tmp_path / "elsewhere" / "real.ckpt"
    real.write_bytes(b"old")
    link = tmp_path / "link.ckpt"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["real.ckpt"]  # no temporary file left
    dangling = tmp_path / "dangling.ckpt"
    dangling.symlink_to(tmp_path / "elsewhere" / "made.ckpt")
    atomic_write(dangling, b"x")
    assert dangling.is_symlink() and (tmp_path / "elsewhere" / "made.ckpt").read_bytes() == b"x"


def test_refuses_a_fifo_and_a_directory(tmp_path, no_replace):
    fifo = tmp_path / "f.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(InputValueError, match=r"f\.ckpt is a FIFO, not a regular file"):
        atomic_write(fifo, b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "l.ckpt"
    link.symlink_to(fifo)
    with pytest.raises(InputValueError, match="a link to .*f.ckpt.* is a FIFO"):
        atomic_write(link, b"data")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputValueError, match="is a directory"):
        atomic_write(tmp_path / "d", b"data")
    with pytest.raises(InputValueError, match="is a FIFO"):
        append_line(fifo, "{}")
    with pytest.raises(InputValueError, match="directory .* does not exist"):
        atomic_write(tmp_path / "nowhere" / "c.ckpt", b"data")


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_refuses_a_character_device(device, no_replace):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(InputValueError, match=f"{device} is a character device"):
        atomic_write(device, b"data")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_train_refuses_a_device_fifo_or_directory_before_training(tmp_path, capsys, no_replace):
    os.mkfifo(tmp_path / "fifo")
    outputs = [("--metrics", str(tmp_path / "fifo")), ("--plot", str(tmp_path))]
    if os.path.exists("/dev/full"):
        outputs.append(("--checkpoint", "/dev/full"))
    for option, path in outputs:
        assert main(["train", "--epochs", "1", "--limit", "40", "--quiet", option, path]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and path in err and "not a regular file" in err, err
    if os.path.exists("/dev/full"):
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path):
    target = tmp_path / "c.ckpt"
    old = time.time() - 2 * 3600
    names = {"stale": ".c.ckpt.abcd_123.tmp", "fresh": ".c.ckpt.zyxw9876.tmp", "other_name": ".d.ckpt.abcd1234.tmp",
             "not_our_pattern": ".c.ckpt.mine.tmp", "users_file": "c.ckpt.abcd1234.tmp"}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    atomic_write(target, b"data")
    left = set(os.listdir(tmp_path))
    assert names["stale"] not in left
    assert left == {"c.ckpt"} | {n for k, n in names.items() if k != "stale"}
    assert remove_stale_temps(target, min_age=0) == [tmp_path / names["fresh"]]


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "c.ckpt"
    atomic_write(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write(target, b"new")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["c.ckpt"]


def test_disk_full_in_train_is_one_line_naming_the_checkpoint(tmp_path, capsys, monkeypatch):
    import xpcnn.files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(xpcnn.files.os, "fsync", full)
    ck = tmp_path / "run.ckpt"
    assert main(["train", "--epochs", "1", "--limit", "40", "--quiet", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert err == f"xpcnn train: error: {ck}: cannot save: No space left on device\n"
    assert os.listdir(tmp_path) == [".run.ckpt.lock"]


def test_metrics_lines_are_appended_atomically_through_a_symlink(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text('{"epoch": 1}')  # no final newline: the next line still starts on its own
    link = tmp_path / "m.jsonl"
    link.symlink_to(real)
    append_line(link, '{"epoch": 2}')
    append_line(link, '{"epoch": 3}\n')
    assert link.is_symlink() and real.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'


def test_a_second_writer_of_one_path_is_refused(tmp_path, capsys):
    ck = tmp_path / "run.ckpt"
    with output_lock(ck):
        with pytest.raises(InputValueError, match="being written by another process"):
            with output_lock(ck):
                pass
        link = tmp_path / "link.ckpt"
        link.symlink_to(ck)
        assert main(["train", "--epochs", "1", "--limit", "40", "--quiet", "--checkpoint", str(link)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "link.ckpt is being written by another process" in err
        assert not ck.exists()
    with output_lock(ck):  # released when the first holder is done
        pass


def test_bench_and_parity_refuse_a_bad_json_or_plot_path_before_running(tmp_path, capsys, no_replace):
    os.mkfifo(tmp_path / "fifo")
    for argv in (["bench", "--json", str(tmp_path / "fifo")], ["bench", "--plot", str(tmp_path)],
                 ["parity", "--json", str(tmp_path / "fifo")]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "not a regular file" in err, (argv, err)


def test_reading_a_fifo_or_device_as_a_checkpoint_is_refused_not_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.ckpt")
    inputs = [str(tmp_path / "fifo.ckpt")] + [d for d in ("/dev/zero",) if os.path.exists(d)]
    for path in inputs:
        for argv in (["evaluate", "--checkpoint", path], ["train", "--resume", path, "--quiet"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"checkpoint {path!r} is not a regular file" in err, err
