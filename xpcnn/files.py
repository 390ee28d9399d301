"""Saving output files safely: atomic replacement, only of regular files, and one writer per path.

Every file xpcnn writes (checkpoints, ``--metrics``, ``--plot``) goes through :func:`atomic_write`:

- the data goes to a temporary ``.NAME.XXXXXXXX.tmp`` beside the target, is fsynced, then renamed over it, so
  readers see the old file or the whole new one, never a part (also after ``kill -9`` or a full disk);
- a symlink is written through: its target is replaced (atomically, in the target's directory), the link stays;
- a path that exists but is not a regular file (a device such as ``/dev/full``, a FIFO, a directory) is refused
  with :class:`~xpcnn.errors.InputValueError` and left as it is;
- an ``OSError`` during the save (``[Errno 28] No space left on device``) names the file.

:func:`output_lock` lets one process at a time write a path (``fcntl.flock`` on ``.NAME.lock`` beside it):
``xpcnn train`` holds it on its outputs for the whole run, so a second run given the same path is refused.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputValueError

# A live save creates its temporary file, writes it (its mtime advancing with every write) and renames it within
# seconds; one untouched for an hour belongs to a process that was killed during a save. Only such files, matching
# our exact name pattern (mkstemp's 8 characters), are removed, so nothing of anyone else's is ever touched.
STALE_TEMP_SECONDS = 3600.0
_TEMP_SUFFIX = ".tmp"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def target_of(path: str | os.PathLike) -> Path:
    """The file a save to ``path`` replaces: ``path`` itself, or the end of its symlink chain.

    Raises InputValueError naming ``path`` when it exists but is not a regular file, or its directory is missing.
    """
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        shown = f"{os.fspath(path)}" + (f" (a link to {real})" if os.fspath(real) != os.path.abspath(path) else "")
        raise InputValueError(f"{shown} is {kind}, not a regular file: refusing to write over it")
    if not real.parent.is_dir():
        raise InputValueError(f"cannot save {os.fspath(path)}: directory {str(real.parent)!r} does not exist")
    return real


def check_output(path: str | os.PathLike | None) -> None:
    """Refuse an unusable output path up front (before hours of training), with the same rules as a save."""
    if path:
        target_of(path)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (through a symlink) so that readers see the old file or the whole new one."""
    target = target_of(path)
    remove_stale_temps(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=target.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.chmod(tmp, _file_mode(target))  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise
    try:  # make the rename itself durable (POSIX); not possible everywhere
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a text file, atomically (the whole file is rewritten: these files are small)."""
    target = target_of(path)
    try:
        old = target.read_bytes()
    except FileNotFoundError:
        old = b""
    except OSError as e:
        raise _naming(e, path) from None
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + line.rstrip("\n").encode() + b"\n")


def remove_stale_temps(target: Path, min_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove ``.NAME.XXXXXXXX.tmp`` files left beside ``target`` by a killed save (see STALE_TEMP_SECONDS)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= min_age:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


@contextmanager
def output_locks(*paths: str | os.PathLike | None) -> Iterator[None]:
    """:func:`output_lock` on each given path (each target once), for the whole block."""
    with ExitStack() as stack:
        seen = set()
        for path in paths:
            if path and target_of(path) not in seen:
                seen.add(target_of(path))
                stack.enter_context(output_lock(path))
        yield


@contextmanager
def output_lock(path: str | os.PathLike | None) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path``'s target while the block runs; a second holder is refused.

    The lock file is left in place afterwards: deleting it would let a process that opened it a moment before
    lock a file nobody else sees. Without ``fcntl`` (Windows) no lock is taken.
    """
    if not path:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    target = target_of(path)
    lock = target.with_name(f".{target.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _naming(e, lock, "cannot create the lock") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputValueError(f"{os.fspath(path)} is being written by another process (it holds {lock}); "
                                  "give this run another path") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _naming(e: OSError, path, doing: str = "cannot save") -> OSError:
    """The same error (type and errno) with ``path`` as its file name, so the one-line message says which file."""
    return type(e)(e.errno, f"{doing}: {e.strerror or e}", os.fspath(path)) if e.errno else \
        OSError(f"{doing} {os.fspath(path)}: {e}")


def _file_mode(path: Path) -> int:
    """The existing file's permissions, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
