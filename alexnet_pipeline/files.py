"""File helpers shared by every stage: atomic writes and content hashes.

A file that a later run reads back (archive, cache, checkpoint, report) is
written to a temporary name in the same folder, flushed to disk and renamed, so
a crash leaves either the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read only when nothing vouches for them:
    a hash recorded beside the file when this pipeline wrote it (see
    record_sha256), or one this process computed, is trusted while the file's
    identity and times are unchanged. A re-run then checks 30 checkpoints of
    ~228 MB in milliseconds instead of seconds."""
    with open(path, "rb") as f:
        # Keyed by the opened file's own stat: a file renamed over `path`
        # meanwhile is not hashed under the old one's key.
        key = _stat_key(path, os.fstat(f.fileno()))
        known = _known(path, key)
        if known is not None:
            return known
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    remember_sha256(path, sha256, key)
    return sha256


def known_sha256(path: str | Path) -> str | None:
    """The hash of `path` if it is known for the file as it is now (recorded
    beside it at writing, or computed by this process since the last change),
    else None: costs a stat() and a small read, never reading the file."""
    try:
        key = _stat_key(path)
    except OSError:
        return None
    return _known(path, key)


def record_sha256(path: str | Path, sha256: str) -> None:
    """Record beside `path` (in .NAME.sha256) the hash of the bytes just
    written to it, with the file's identity and times: later processes trust
    it instead of reading the file, until any of them change. The change time
    (ctime) is in the record because no program can set it back: a file
    edited in place and given its old mtime again is still hashed anew."""
    path = Path(path)
    key = remember_sha256(path, sha256)
    atomic_write_text(_record_path(path), json.dumps({"sha256": sha256, "stat": list(key[1:])}))


def _known(path: str | Path, key: tuple) -> str | None:
    with _known_lock:
        known = _known_sha256.get(key)
    if known is not None:
        return known
    try:
        record = json.loads(_record_path(Path(path)).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("stat") == list(key[1:]) and isinstance(record.get("sha256"), str):
        remember_sha256(path, record["sha256"], key)
        return record["sha256"]
    return None


def _record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def remember_sha256(path: str | Path, sha256: str, key: tuple | None = None) -> tuple:
    """Remember the hash for this process; returns the stat key it is valid for."""
    key = key or _stat_key(path)
    with _known_lock:
        if len(_known_sha256) >= _KNOWN_MAX:
            _known_sha256.pop(next(iter(_known_sha256)))  # oldest first
        _known_sha256[key] = sha256
    return key


def _stat_key(path: str | Path, stat: os.stat_result | None = None) -> tuple:
    stat = stat or os.stat(path)
    return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


_KNOWN_MAX = 4096
_known_sha256: dict[tuple, str] = {}
_known_lock = threading.Lock()


def shown_path(path: str | Path) -> str:
    """A path as text for messages and reports: bytes of a file name that are
    not UTF-8 (kept by Python as lone surrogates, which cannot be printed,
    logged or written as UTF-8) appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def listing_digest(root: str | Path, paths: Iterable[str | Path]) -> str:
    """SHA-256 over each file's path relative to `root` (its bytes, whatever
    the encoding), size, modification time, change time (ctime) and inode.
    Costs one stat() per file and reads nothing.

    Rewriting a file changes its ctime, and unlike the modification time no
    user call can set it back (os.utime sets ctime to now), so equal digests
    mean no file was written, replaced, renamed, touched, chmod'ed or given a
    new hard link in between, on any file system that keeps ctime (every
    local Linux one, and NFS). The one gap: a file written twice within one
    tick of the kernel's clock (a few ms), with the listing taken between the
    two writes, i.e. files changed while a run reads them."""
    digest = hashlib.sha256(b"listing-v1\n")
    root = os.fsencode(root)
    for path in paths:
        encoded = os.fsencode(path)
        digest.update(os.path.relpath(encoded, root) + b"\0")
        try:
            stat = os.stat(encoded)
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}\n".encode())
            continue
        digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}\n".encode())
    return digest.hexdigest()


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
