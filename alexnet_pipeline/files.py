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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
        os.chmod(tmp, _default_mode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links (some FUSE and SMB mounts):
            # O_EXCL still decides the race, and the file is small.
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _default_mode())
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
