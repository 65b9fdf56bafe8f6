"""One run at a time per run folder.

    from alexnet_pipeline.lock import run_folder_lock
    with run_folder_lock(run_dir):
        ...  # train, evaluate, write the report

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``. The kernel drops it when the
holding process ends, however it ends (kill -9, OOM killer, preemption), so a
crashed run never leaves it stuck: the next run simply takes it. The file
also names the holder (pid, host, start time) for the refusal message only;
it is never used to decide anything. Needs a filesystem with working flock
(local disks, and NFS on Linux, where flock maps to POSIX locks).

Only a run's own folder is locked (alexnet_pipeline/ownership.py): before
the lock file is created, the folder is checked to be new, empty or a run
folder of this pipeline, and it gets its run marker before its lock file. A
.lock in any other folder is never opened, written or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from alexnet_pipeline.errors import ConfigError, RunLockedError
from alexnet_pipeline.files import missing_folders, remove_created_folders
from alexnet_pipeline.ownership import (
    LOCK_NAME,
    RUN_MARKER,
    RunIdentity,
    check_run_folder,
    claim_run_folder,
    mark_new_run_folder,
    release_unused_run_folder,
)


def _holder_text() -> str:
    return json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    })


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"process {info['pid']} on {info.get('host', '?')} (started {info.get('started', '?')})"


def _refusal(run_dir: Path, fd: int) -> RunLockedError:
    return RunLockedError(
        f"another run is already writing to {run_dir}: {_describe_holder(fd)} holds {run_dir / LOCK_NAME}. "
        "Wait for it to finish, or pass a different --out to run both. "
        "(A run that was killed releases the lock by itself; nothing needs deleting.)"
    )


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path, identity: RunIdentity | None = None) -> Iterator[Path]:
    """Hold the run folder's lock for the duration of the block, or raise
    RunLockedError at once if another live process holds it.

    The folder must be new, empty, or a run folder of this pipeline holding
    the run `identity` describes (ownership.claim_run_folder; ConfigError
    otherwise, before anything is created or deleted). It is marked as ours
    before its lock file is created, so a run killed at any point leaves a
    folder the next run recognises. A run folder created here and holding
    nothing but its marker at the end (the run failed before writing
    anything) is removed again, so a refused input leaves no trace."""
    run_dir = Path(run_dir).expanduser()
    state = check_run_folder(run_dir, identity)  # reads only: a refusal leaves everything as it was
    # The folders this call creates (run_dir and missing parents, e.g. runs/).
    created = missing_folders(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out: cannot create the run folder {run_dir} ({exc.strerror}); pass another --out") from None
    try:
        wrote_marker = state in ("new", "empty") and mark_new_run_folder(run_dir, identity)
    except OSError as exc:
        # Permissions are checked before (check_run_folder); this is what
        # they cannot tell: a read-only mount, an ACL, a folder that changed.
        remove_created_folders(created)
        raise ConfigError(f"out: cannot write into the run folder {run_dir} ({exc.strerror}); "
                          "pass another --out") from None
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if wrote_marker:
                release_unused_run_folder(run_dir)
            remove_created_folders(created)
            raise ConfigError(f"out: cannot write the lock file {path} ({exc.strerror}); pass another --out") from None
        if not _try_flock(fd):
            error = _refusal(run_dir, fd)
            os.close(fd)
            raise error
        # The previous holder unlinks the file when it finishes; if that
        # happened between our open and our flock, we locked a file nobody
        # else will ever open again: start over with the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        # A holder that finished between our first look and our lock took its
        # (then unused) marker away: the folder holds only our lock now.
        if not (run_dir / RUN_MARKER).exists() and set(os.listdir(run_dir)) <= {LOCK_NAME}:
            wrote_marker = mark_new_run_folder(run_dir, identity) or wrote_marker
        wrote_marker = claim_run_folder(run_dir, identity) or wrote_marker
        yield path
    finally:
        if wrote_marker:
            release_unused_run_folder(run_dir)
        # Unlink while still holding the lock (see the inode check above).
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        remove_created_folders(created)


def check_not_locked(run_dir: str | Path) -> None:
    """Raise RunLockedError if a live process holds the run folder's lock,
    and first ConfigError if the folder is no place for a run
    (ownership.check_run_folder: a folder that is not ours is refused
    without looking at its .lock). A quick look for the command line, before
    minutes of start-up; creates nothing. The run itself checks again, with
    its config, and takes the lock (another run may start in between)."""
    check_run_folder(run_dir)
    path = Path(run_dir).expanduser() / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or no folder): nobody holds it
    try:
        if not _try_flock(fd):
            raise _refusal(Path(run_dir), fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
