"""Fetch and unpack the official CIFAR-10 archive, or use a local copy.

    from alexnet_pipeline.download import ensure_cifar10
    batches_dir = ensure_cifar10("data")     # -> data/cifar-10-batches-py

Order of preference: an extracted ``cifar-10-batches-py/`` in the data folder,
then ``cifar-10-python.tar.gz`` there, then a download over HTTPS with the
system's certificate checks (never turned off), written to a temporary file
and renamed only when complete (torch.hub's downloader does that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path

from alexnet_pipeline import faults
from alexnet_pipeline.config import CIFAR10_MD5, CIFAR10_URL
from alexnet_pipeline.errors import DataError
from alexnet_pipeline.files import md5_file

log = logging.getLogger(__name__)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR_NAME = "cifar-10-batches-py"
BATCH_FILES = ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
DOWNLOAD_TIMEOUT_S = 30


def batches_complete(batches_dir: Path) -> bool:
    return all((batches_dir / name).is_file() for name in BATCH_FILES)


def ensure_cifar10(
    data_dir: str | Path,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Return the folder of extracted CIFAR-10 batches, downloading if needed."""
    data_dir = Path(data_dir).expanduser()
    batches_dir = data_dir / BATCHES_DIR_NAME
    if batches_complete(batches_dir):
        log.info("Using the extracted CIFAR-10 batches in %s", batches_dir)
        return batches_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is a file, not a folder; point it at a folder for CIFAR-10")
    if data_dir.is_dir() and not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise DataError(
            f"the data folder {data_dir} is not readable and writable by this user; "
            "fix its permissions or pass another --data-dir"
        )
    archive = data_dir / ARCHIVE_NAME
    if archive.is_file():
        log.info("Using the local archive %s", archive)
    else:
        _download(url, archive, data_dir, progress)
    if verify:
        actual = md5_file(archive)
        if actual != md5:
            raise DataError(
                f"checksum mismatch for {archive}: expected MD5 {md5}, got {actual}. "
                "The file is damaged or not the official archive: delete it to download it again, "
                "or pass --no-verify to use this copy as it is."
            )
    _extract(archive, data_dir)
    if not batches_complete(batches_dir):
        missing = [n for n in BATCH_FILES if not (batches_dir / n).is_file()]
        raise DataError(
            f"{archive} does not hold the CIFAR-10 python batches (missing {', '.join(missing)} "
            f"under {BATCHES_DIR_NAME}/); use the official {ARCHIVE_NAME}"
        )
    return batches_dir


def _download(url: str, archive: Path, data_dir: Path, progress: bool) -> None:
    import torch.hub

    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {data_dir}: {exc.strerror}") from None
    log.info("Downloading %s to %s", url, archive)
    faults.crash_point("download")
    previous = socket.getdefaulttimeout()
    # urllib waits forever on a silent network by default; a stuck download
    # should fail with the offline hint instead.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(archive), progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if created:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # made for the download only; leave nothing behind
        raise _offline_error(url, data_dir, reason) from None
    finally:
        socket.setdefaulttimeout(previous)


def _offline_error(url: str, data_dir: Path, reason) -> DataError:
    return DataError(
        f"could not download CIFAR-10 from {url} ({reason}). "
        f"If this machine is offline, put {ARCHIVE_NAME} (from {url}) or its extracted "
        f"{BATCHES_DIR_NAME}/ folder into {data_dir.resolve()} and run again."
    )


def check_cifar10_reachable(data_dir: str | Path, url: str = CIFAR10_URL, timeout: float = 5.0) -> None:
    """When a download will be needed, check that the server answers at all:
    offline, the user hears where to put the archive in seconds rather than
    after the orchestration has started. The download itself still reports
    any later failure."""
    data_dir = Path(data_dir).expanduser()
    if batches_complete(data_dir / BATCHES_DIR_NAME) or (data_dir / ARCHIVE_NAME).is_file():
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise _offline_error(url, data_dir, exc.strerror or exc) from None


def _refuse_unsafe_members(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    # The 'data' filter strips a leading '/' and extracts the member inside
    # the target; the official archive has no such member, so refuse it.
    if member.name.startswith(("/", os.sep)):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest_path)


def _extract(archive: Path, data_dir: Path) -> None:
    """Extract through tarfile's 'data' filter (it refuses '..', links pointing
    outside the target and device files), refusing absolute names too. Extraction goes to a
    temporary folder first so that a crash never leaves half a batches folder."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                faults.crash_point("extract")
                tar.extractall(tmp, filter=_refuse_unsafe_members)
        except tarfile.FilterError as exc:
            raise DataError(
                f"refusing to extract {archive}: member {exc.tarinfo.name!r} would land outside "
                f"{data_dir} or is not a regular file ({exc}). Use the official {ARCHIVE_NAME}."
            ) from None
        except (tarfile.ReadError, EOFError, OSError) as exc:
            raise DataError(
                f"cannot read {archive} ({exc}): it is truncated or not a .tar.gz. "
                f"Delete it and run again to download it, or replace it with the official {ARCHIVE_NAME}."
            ) from None
        extracted = tmp / BATCHES_DIR_NAME
        if not extracted.is_dir():
            raise DataError(f"{archive} has no {BATCHES_DIR_NAME}/ folder; use the official {ARCHIVE_NAME}")
        target = data_dir / BATCHES_DIR_NAME
        if batches_complete(target):
            return  # a concurrent run on the same data folder extracted it first
        if target.exists():
            # An incomplete earlier extraction (e.g. files deleted by hand).
            shutil.rmtree(target)
        try:
            extracted.rename(target)
        except OSError:
            if not batches_complete(target):  # else: lost a race to a concurrent run
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
