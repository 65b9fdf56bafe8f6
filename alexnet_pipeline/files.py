"""File helpers shared by every stage: atomic writes, modes, folders.

A file that a later run reads back (archive, cache, checkpoint, report) is
written to a temporary name in the same folder, flushed to disk and renamed, so
a crash leaves either the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


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
