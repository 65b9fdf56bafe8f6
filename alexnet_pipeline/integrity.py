"""Is this file intact? Content hashes computed once, while a file is
written, and trusted afterwards for as long as the file provably has not
changed.

    from alexnet_pipeline.integrity import HashingWriter, intact, record_sha256
    with open(tmp, "wb") as f:
        writer = HashingWriter(f)
        torch.save(obj, writer)                      # hashed as it is written
    os.replace(tmp, path)
    record_sha256(path, writer.hexdigest())          # .NAME.sha256 beside it
    ...
    intact(path, expected_sha256)                    # later, in any process

A hash is trusted (without reading the file) while the file's device, inode,
size, modification time and change time (ctime) are those it was recorded or
computed for; otherwise the content is read and hashed again. ctime is what
makes that safe: no program can set it back, so a file edited in place (even
keeping its size and restoring its mtime) is hashed anew. Re-checking 30
AlexNet checkpoints of ~228 MB then costs milliseconds instead of seconds.

Also here: the MD5 of a file (the official CIFAR-10 checksums) and the
stat-only digest of a listing of files (a data folder's cache key).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from alexnet_pipeline.files import atomic_write_text


class HashingWriter:
    """A file object that hashes what is written through it (torch.save
    accepts one): a file's SHA-256 without reading it back."""

    def __init__(self, f):
        self._f = f
        self._digest = hashlib.sha256()

    def write(self, data) -> int:
        self._digest.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def record_sha256(path: str | Path, sha256: str) -> None:
    """Record beside `path` (in .NAME.sha256) the hash of the bytes just
    written to it, with the file's identity and times: later processes trust
    it instead of reading the file, until any of them change."""
    path = Path(path)
    key = _remember(path, sha256)
    atomic_write_text(_record_path(path), json.dumps({"sha256": sha256, "stat": list(key[1:])}))


def remove_with_record(path: str | Path) -> None:
    """Delete a file and the hash recorded beside it (record_sha256)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _record_path(path).unlink(missing_ok=True)


def intact(path: str | Path, expected_sha256: str) -> bool:
    """Whether `path` is a file holding exactly the bytes whose SHA-256 is
    `expected_sha256`. False for a missing file; reads the file only when
    no recorded or remembered hash holds for it as it is now."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return sha256_file(path) == expected_sha256
    except FileNotFoundError:  # removed meanwhile
        return False


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read only when no hash recorded beside it
    (record_sha256) or computed by this process holds for it as it is now."""
    with open(path, "rb") as f:
        # Keyed by the opened file's own stat: a file renamed over `path`
        # meanwhile is not hashed under the old one's key.
        key = _stat_key(path, os.fstat(f.fileno()))
        known = _known(path, key)
        if known is not None:
            return known
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    _remember(path, sha256, key)
    return sha256


def known_sha256(path: str | Path) -> str | None:
    """The hash of `path` if it is known for the file as it is now, else
    None: costs a stat() and a small read, never reading the file."""
    try:
        key = _stat_key(path)
    except OSError:
        return None
    return _known(path, key)


def forget_known_hashes() -> None:
    """Forget what this process computed or read (the records beside the
    files stay): as a new process would start."""
    with _known_lock:
        _known_sha256.clear()


def md5_file(path: str | Path) -> str:
    """MD5 of a file's bytes, always read: for checksums published as MD5
    (CIFAR-10's), not for deciding anything security-related."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


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


# --- the memo: hashes known for (path, device, inode, size, mtime, ctime) ---------------


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
        _remember(path, record["sha256"], key)
        return record["sha256"]
    return None


def _record_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def _remember(path: str | Path, sha256: str, key: tuple | None = None) -> tuple:
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
