"""File helpers shared by every stage: atomic writes, modes, folders, and
reading the user's input files (config, weights, archives, checkpoints).

A file that a later run reads back (archive, cache, checkpoint, report) is
written to a temporary name in the same folder, flushed to disk and renamed, so
a crash leaves either the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


def shown_path(path: str | Path) -> str:
    """A path as text for messages and reports: bytes of a file name that are
    not UTF-8 (kept by Python as lone surrogates, which cannot be printed,
    logged or written as UTF-8) appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def under_umask(mode: int) -> int:
    """`mode` less what the user's umask takes away: what open() or mkdir()
    would have given. mkstemp and mkdtemp create 0600 and 0700 instead."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def missing_folders(folder: str | Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost
    first: what mkdir(parents=True) is about to create."""
    folder = Path(folder)
    return [d for d in (folder, *folder.parents) if not d.exists()]


def remove_created_folders(created: Iterable[Path]) -> None:
    """Remove again, innermost first, the folders that missing_folders()
    listed before they were created, as far as they are still empty: a
    refused or failed step leaves the tree as it found it."""
    for folder in created:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break  # not empty (or not ours to remove): neither are its parents


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _unfinished_lock:
        if not _abandoned:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            _unfinished.add(tmp_path)
    if _abandoned:
        _wait_for_exit()
    try:
        yield tmp_path
        os.chmod(tmp_path, under_umask(0o666))
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        with _unfinished_lock:
            if not _abandoned:
                os.replace(tmp_path, path)
                _unfinished.discard(tmp_path)
        if _abandoned:
            _wait_for_exit()
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        with _unfinished_lock:
            _unfinished.discard(tmp_path)
        raise


def replace_durably(source: str | Path, target: str | Path) -> None:
    """Rename `source` over `target` and make the rename itself durable.
    Like atomic_path's rename, never once the process is stopping (see
    abandon_unfinished_files): the file then stays under its source name."""
    with _unfinished_lock:
        if not _abandoned:
            os.replace(source, target)
    if _abandoned:
        _wait_for_exit()
    _fsync_dir(Path(target).parent)


def abandon_unfinished_files() -> list[Path]:
    """For a process about to exit on a signal (os._exit, no clean-up of its
    own): delete the temporary files that atomic_path has not yet renamed,
    and make every thread still writing one wait, forever, instead of
    renaming it or starting another. Returns the files deleted."""
    global _abandoned
    with _unfinished_lock:
        _abandoned = True
        removed = sorted(_unfinished)
        for tmp_path in removed:
            tmp_path.unlink(missing_ok=True)
        _unfinished.clear()
    return removed


def _wait_for_exit() -> None:
    threading.Event().wait()


# Temporary files of atomic_path not yet renamed; the lock also makes a
# rename and abandon_unfinished_files() exclusive of each other. Reentrant:
# a signal handler may call abandon_unfinished_files() on the main thread
# while that thread, interrupted, holds the lock.
_unfinished: set[Path] = set()
_unfinished_lock = threading.RLock()
_abandoned = False


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_text_exclusively(path: str | Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists already; return whether
    this call created it. Complete or absent, as atomic_path's files: written
    to a temporary name and hard-linked into place (link, unlike rename,
    refuses to replace an existing file), so of two processes racing for the
    same name exactly one creates it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, under_umask(0o666))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links (some FUSE and SMB mounts):
            # O_EXCL still decides the race, and the file is small.
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, under_umask(0o666))
            except FileExistsError:
                return False
            with os.fdopen(out, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(path.parent)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


# --- input files: the kind of file expected, read within bounds -------------------

# A file of the user's read into memory whole (a config) is read in blocks,
# and given up on past this long: a disk or network mount that hangs on
# one read still blocks that read, but a slow one cannot stall the run.
READ_TIMEOUT_S = 30.0
_READ_BLOCK = 1 << 20

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | Path, what: str, error: type[Exception]) -> None:
    """Refuse `path` with one `error` line when it exists and is not a
    regular file (symbolic links followed): a FIFO would block the reader
    until something writes to it, /dev/zero would never end, a folder reads
    as a confusing error. A missing or unreadable file raises its OSError
    (FileNotFoundError, PermissionError) for the caller's own message."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise error(f"{what} {shown_path(path)} is {_kind(mode)}, not a regular file; give the path of a file")


def _too_large(path: str | Path, what: str, size: int, max_bytes: int) -> str:
    return (f"{what} {shown_path(path)} is larger than {_size_text(max_bytes)} ({_size_text(size)}); "
            "check that this is the file you meant")


def _size_text(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"


def open_regular_file(path: str | Path, what: str, error: type[Exception], max_bytes: int | None = None) -> BinaryIO:
    """`path` opened for reading (binary), once it is known to be a regular
    file of at most `max_bytes`; see check_regular_file for the refusals.
    The kind is checked again on the open file: a path swapped for a FIFO
    between the check and the open is still refused, not waited on
    (O_NONBLOCK makes opening a FIFO return at once)."""
    check_regular_file(path, what, error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {shown_path(path)} is {_kind(info.st_mode)}, not a regular file; give the path of a file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(_too_large(path, what, info.st_size, max_bytes))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, what: str, error: type[Exception], max_bytes: int,
                      timeout_s: float = READ_TIMEOUT_S) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, read within
    `timeout_s` (checked between blocks); every refusal is one `error`.
    A file that grows past `max_bytes` while being read is refused too."""
    deadline = time.monotonic() + timeout_s
    with open_regular_file(path, what, error, max_bytes) as f:
        blocks, size = [], 0
        while block := f.read(_READ_BLOCK):
            blocks.append(block)
            size += len(block)
            if size > max_bytes:
                raise error(_too_large(path, what, size, max_bytes))
            if time.monotonic() > deadline:
                raise error(f"reading {what} {shown_path(path)} took more than {timeout_s:g} s; "
                            "is it on a slow or hung disk? Copy it to a local disk")
    return b"".join(blocks)
