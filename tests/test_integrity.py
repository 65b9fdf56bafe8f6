"""alexnet_pipeline/integrity.py on small files: a hash recorded at writing is
trusted only while the file provably did not change, and anything else is
read again. (test_evaluate.py checks the same on a real checkpoint.)"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from alexnet_pipeline import integrity
from tests.fixtures import md5_of, sha256_of


# Longer than one tick of the kernel's coarse clock, which stamps ctime: two
# writes within one tick may share it (the gap listing_digest documents).
TICK = 0.03


@pytest.fixture
def written(tmp_path):
    """A file written through HashingWriter, its hash recorded beside it, and
    this process's memory of it forgotten (as in a later process)."""
    path = tmp_path / "alexnet-01.pt"
    with open(path, "wb") as f:
        writer = integrity.HashingWriter(f)
        writer.write(b"weights " * 1000)
    integrity.record_sha256(path, writer.hexdigest())
    integrity.forget_known_hashes()
    return path, writer.hexdigest()


def _no_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the file was read although its recorded hash still holds")

    monkeypatch.setattr(hashlib, "file_digest", refuse)


def test_the_hash_written_is_the_content_hash_and_is_trusted_without_reading(written, monkeypatch):
    path, sha256 = written
    assert sha256 == sha256_of(path)
    assert (path.parent / ".alexnet-01.pt.sha256").is_file()
    with monkeypatch.context() as m:
        _no_reading(m)
        assert integrity.intact(path, sha256)
        assert not integrity.intact(path, "0" * 64)


@pytest.mark.parametrize("change", ["same-size edit, mtime restored", "replaced by a copy", "appended to"])
def test_any_change_makes_the_file_hashed_again(written, change):
    path, sha256 = written
    stat = path.stat()
    time.sleep(TICK)
    if change == "same-size edit, mtime restored":
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        with open(path, "r+b") as f:
            f.write(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    elif change == "replaced by a copy":
        copy = path.with_name("copy")
        copy.write_bytes(path.read_bytes().replace(b"weights", b"Weights", 1))
        os.replace(copy, path)
    else:
        with open(path, "ab") as f:
            f.write(b"x")
    assert integrity.known_sha256(path) is None
    assert not integrity.intact(path, sha256)
    assert integrity.sha256_file(path) == sha256_of(path)


def test_a_damaged_record_is_not_trusted(written):
    path, sha256 = written
    record = path.parent / ".alexnet-01.pt.sha256"
    record.write_text('{"sha256": "' + "0" * 64 + '", "stat": ' + record.read_text().split('"stat": ')[1])
    integrity.forget_known_hashes()
    # The record claims another hash for the same stat: it is believed (it
    # is written only by this pipeline, right after the file) ...
    assert integrity.known_sha256(path) == "0" * 64
    # ... but one that is not JSON, or names other stats, is ignored.
    record.write_text("not json")
    integrity.forget_known_hashes()
    assert integrity.known_sha256(path) is None and integrity.intact(path, sha256)


def test_a_missing_file_or_a_folder_is_not_intact(tmp_path):
    assert not integrity.intact(tmp_path / "absent.pt", "0" * 64)
    assert not integrity.intact(tmp_path, "0" * 64)
    assert integrity.known_sha256(tmp_path / "absent.pt") is None


def test_md5_and_listing_digest(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(10_000))
    assert integrity.md5_file(path) == md5_of(path)

    before = integrity.listing_digest(tmp_path, [path])
    assert integrity.listing_digest(tmp_path, [path]) == before
    stat = path.stat()
    time.sleep(TICK)
    with open(path, "r+b") as f:
        f.write(b"\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: ctime tells
    assert integrity.listing_digest(tmp_path, [path]) != before
