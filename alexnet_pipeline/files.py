"""File helpers shared by every stage: atomic writes and content hashes.

A file that a later run reads back (archive, cache, checkpoint, report) is
written to a temporary name in the same folder, flushed to disk and renamed, so
a crash leaves either the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes. Remembered per process for an unchanged file
    (same inode, size and modification time): a re-run checks each checkpoint
    (~228 MB) once, not once to validate the cache and again for its key."""
    with open(path, "rb") as f:
        # Keyed by the opened file's own stat: a file renamed over `path`
        # meanwhile is not hashed under the old one's key.
        key = _stat_key(path, os.fstat(f.fileno()))
        with _known_lock:
            known = _known_sha256.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return remember_sha256(path, digest.hexdigest(), key)


def known_sha256(path: str | Path) -> str | None:
    """The hash of `path` if this process already knows it for the file as it
    is now (it hashed or wrote it since the last change), else None: costs
    one stat(), never a read."""
    try:
        key = _stat_key(path)
    except OSError:
        return None
    with _known_lock:
        return _known_sha256.get(key)


def remember_sha256(path: str | Path, sha256: str, key: tuple | None = None) -> str:
    key = key or _stat_key(path)
    with _known_lock:
        if len(_known_sha256) >= _KNOWN_MAX:
            _known_sha256.pop(next(iter(_known_sha256)))  # oldest first
        _known_sha256[key] = sha256
    return sha256


def _stat_key(path: str | Path, stat: os.stat_result | None = None) -> tuple:
    stat = stat or os.stat(path)
    return (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


_KNOWN_MAX = 4096
_known_sha256: dict[tuple, str] = {}
_known_lock = threading.Lock()


def md5_file(path: str | Path, chunk_size: int = 4 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _default_mode() -> int:
    # mkstemp creates 0600 files; give the file what the user's umask allows.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        os.chmod(tmp_path, _default_mode())
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
