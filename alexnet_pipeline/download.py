"""Fetch and unpack the official CIFAR-10 archive, or use a local copy.

    from alexnet_pipeline.download import ensure_cifar10
    batches_dir = ensure_cifar10("data")     # -> data/cifar-10-batches-py

Order of preference: an extracted ``cifar-10-batches-py/`` in the data folder,
then ``cifar-10-python.tar.gz`` there, then a download over HTTPS with the
system's certificate checks (never turned off), written to a temporary file
and renamed only when complete (torch.hub's downloader does that).
"""

from __future__ import annotations

import errno
import logging
import lzma
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

from alexnet_pipeline import faults
from alexnet_pipeline.config import CIFAR10_MD5, CIFAR10_URL
from alexnet_pipeline.errors import DataError
from alexnet_pipeline.files import check_regular_file, missing_folders, open_regular_file, remove_created_folders
from alexnet_pipeline.integrity import md5_file

log = logging.getLogger(__name__)

# Part of the download task's cache key: bump when a change here changes
# what ensure_cifar10 returns.
DOWNLOAD_VERSION = 2

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR_NAME = "cifar-10-batches-py"
BATCH_FILES = ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
DOWNLOAD_TIMEOUT_S = 30
# Limits on what an archive may unpack to. The official archive (170 MB)
# holds 8 entries, 178 MB in all: it inflates 1.05 times. A "compression
# bomb" of a few MB that inflates to gigabytes is refused before anything is
# written, and so is one whose entries alone would fill the disk.
MAX_EXTRACTED_BYTES = 1 << 30
MAX_EXPANSION_RATIO = 100
# Below this total the ratio does not matter (a small test archive may
# compress well).
RATIO_CHECKED_ABOVE = 64 << 20
MAX_MEMBERS = 1000
# Errors of the local disk, not of the network or the archive's content.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _data_dir_is_a_file(data_dir: Path) -> DataError:
    return DataError(
        f"--data-dir {data_dir} is a file, not a folder; point it at a folder for CIFAR-10 (one holding "
        f"{ARCHIVE_NAME} or {BATCHES_DIR_NAME}/, or an empty one to download into)"
    )


def _archive_present(archive: Path) -> bool:
    """Whether the data folder holds the archive; a FIFO, device or folder
    by that name is refused, neither read nor replaced by a download."""
    try:
        check_regular_file(archive, "the CIFAR-10 archive", DataError)
    except (FileNotFoundError, NotADirectoryError):
        return False  # (a data folder that is a file is refused with its own message)
    except OSError as exc:
        raise _unreadable_archive(archive, exc) from None
    return True


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
        if verify and md5 == CIFAR10_MD5:
            # No archive checked in this call: check the files themselves.
            _verify_batches(batches_dir)
        return batches_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise _data_dir_is_a_file(data_dir)
    if data_dir.is_dir() and not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise DataError(
            f"the data folder {data_dir} is not readable and writable by this user; "
            "fix its permissions or pass another --data-dir"
        )
    archive = data_dir / ARCHIVE_NAME
    if _archive_present(archive):
        log.info("Using the local archive %s", archive)
    else:
        _download(url, archive, data_dir, progress)
    if verify:
        try:
            actual = md5_file(archive)
        except OSError as exc:
            raise _unreadable_archive(archive, exc) from None
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


def official_batch_md5s() -> dict[str, str]:
    """The MD5 of each file of the official archive, as torchvision's CIFAR10
    dataset lists them."""
    from torchvision.datasets import CIFAR10

    return {**dict(CIFAR10.train_list + CIFAR10.test_list), CIFAR10.meta["filename"]: CIFAR10.meta["md5"]}


def _verify_batches(batches_dir: Path) -> None:
    expected = official_batch_md5s()
    differ = []
    for name in BATCH_FILES:
        try:
            if md5_file(batches_dir / name) != expected[name]:
                differ.append(name)
        except OSError as exc:
            raise DataError(f"cannot read {batches_dir / name} ({exc.strerror or exc}); check its permissions") from None
    if differ:
        raise DataError(
            f"{', '.join(differ)} in {batches_dir} differ from the official CIFAR-10 files (MD5s as torchvision lists "
            f"them). Delete {batches_dir} to extract them again from the archive, or pass --no-verify to use them "
            "as they are."
        )


def _download(url: str, archive: Path, data_dir: Path, progress: bool) -> None:
    import torch.hub

    created = missing_folders(data_dir)
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
        remove_created_folders(created)  # made for the download only; leave nothing behind
        if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError):
            # Writing the file failed, not the network: say so, not "offline".
            if exc.errno in DISK_FULL_ERRNOS:
                raise _disk_full_error(f"downloading {url} to {archive}", data_dir, exc,
                                       f"the official archive is {_megabytes(DOWNLOAD_SIZE_HINT)}") from None
            if exc.errno in NOT_WRITABLE_ERRNOS:
                raise _not_writable_error(data_dir, exc) from None
        raise _offline_error(url, data_dir, reason) from None
    finally:
        socket.setdefaulttimeout(previous)


# The official archive's size, for the message when a download fills the disk.
DOWNLOAD_SIZE_HINT = 170_498_071


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full_error(doing: str, data_dir: Path, exc: OSError, needed: str) -> DataError:
    free = _free_bytes(data_dir)
    free_text = f", {_megabytes(free)} free there now" if free is not None else ""
    return DataError(
        f"the disk is full: {doing} failed ({exc.strerror}); {needed}{free_text}. Free some space on the disk "
        f"holding {data_dir}, or pass --data-dir on a disk with room, then run again (nothing half-written was kept)."
    )


def _not_writable_error(data_dir: Path, exc: OSError) -> DataError:
    return DataError(
        f"cannot write into the data folder {data_dir} ({exc.strerror}); fix its permissions or pass another --data-dir"
    )


def _unreadable_archive(archive: Path, exc: OSError) -> DataError:
    return DataError(
        f"cannot read {archive} ({exc.strerror}); check its permissions, or delete it to download it again"
    )


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
    if batches_complete(data_dir / BATCHES_DIR_NAME) or _archive_present(data_dir / ARCHIVE_NAME):
        return
    if data_dir.exists() and not data_dir.is_dir():
        raise _data_dir_is_a_file(data_dir)  # no download would help
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


def _checked_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's entries, refusing it at the first one that takes the
    count or total size past the limits above. Only headers are read: a
    bomb is stopped after decompressing about MAX_EXTRACTED_BYTES at most,
    and nothing is written."""
    archive_bytes = archive.stat().st_size
    total = 0
    for count, member in enumerate(tar, start=1):
        total += max(member.size, 0)
        if count > MAX_MEMBERS:
            raise DataError(
                f"refusing to extract {archive}: it holds more than {MAX_MEMBERS} entries (the official "
                f"{ARCHIVE_NAME} holds 8). Delete it and run again to download the official archive."
            )
        if total > MAX_EXTRACTED_BYTES:
            raise DataError(
                f"refusing to extract {archive}: its entries add up to more than {_megabytes(MAX_EXTRACTED_BYTES)} "
                f"(the official {ARCHIVE_NAME} holds 178 MB). Delete it and run again to download the official archive."
            )
        if total > RATIO_CHECKED_ABOVE and total > MAX_EXPANSION_RATIO * archive_bytes:
            raise DataError(
                f"refusing to extract {archive}: its {_megabytes(archive_bytes)} inflate to more than "
                f"{_megabytes(total)}, over {MAX_EXPANSION_RATIO} times their size (a compression bomb; the official "
                f"{ARCHIVE_NAME} inflates 1.05 times). Delete it and run again to download the official archive."
            )
        yield member


def _extract(archive: Path, data_dir: Path) -> None:
    """Extract through tarfile's 'data' filter (it refuses '..', links pointing
    outside the target and device files), refusing absolute names too, and
    archives past the size limits above. The entries' sizes are added up
    first, from their headers, so neither a compression bomb nor an archive
    too large for the disk writes anything. Extraction goes to a temporary
    folder first so that a crash never leaves half a batches folder."""
    total = None
    try:
        with open_regular_file(archive, "the CIFAR-10 archive", DataError) as raw, \
                tarfile.open(fileobj=raw, mode="r:*") as tar:
            members = list(_checked_members(tar, archive))
            total = sum(max(m.size, 0) for m in members)
            free = _free_bytes(data_dir)
            if free is not None and total > free:
                raise DataError(
                    f"not enough disk space: extracting {archive} needs {_megabytes(total)} and the disk holding "
                    f"{data_dir} has {_megabytes(free)} free. Free some space, or pass --data-dir on a disk with "
                    f"room (or put an extracted {BATCHES_DIR_NAME}/ there). Nothing was extracted."
                )
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
            try:
                faults.crash_point("extract")
                tar.extractall(tmp, members=members, filter=_refuse_unsafe_members)
                _move_into_place(archive, tmp, data_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except tarfile.FilterError as exc:
        raise DataError(
            f"refusing to extract {archive}: member {exc.tarinfo.name!r} would land outside "
            f"{data_dir} or is not a regular file ({exc}). Use the official {ARCHIVE_NAME}."
        ) from None
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            needed = (f"its contents take {_megabytes(total)}" if total is not None
                      else "the official archive holds 178 MB")
            raise _disk_full_error(f"extracting {archive}", data_dir, exc, needed) from None
        if exc.errno is not None and total is None:  # still reading headers: the archive itself
            raise _unreadable_archive(archive, exc) from None
        if exc.errno in NOT_WRITABLE_ERRNOS:
            raise _not_writable_error(data_dir, exc) from None
        if exc.errno is not None:
            raise DataError(f"extracting {archive} into {data_dir} failed ({exc.strerror}); check that disk") from None
        raise _truncated_archive(archive, exc) from None  # gzip's BadGzipFile and the like: no errno
    except (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _truncated_archive(archive, exc) from None


def _truncated_archive(archive: Path, exc: Exception) -> DataError:
    return DataError(
        f"cannot read {archive} ({exc}): it is truncated or not a .tar.gz. "
        f"Delete it and run again to download it, or replace it with the official {ARCHIVE_NAME}."
    )


def _move_into_place(archive: Path, tmp: Path, data_dir: Path) -> None:
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
