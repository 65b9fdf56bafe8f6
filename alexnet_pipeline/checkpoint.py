"""Self-describing checkpoints and the rolling resume state.

    checkpoints/alexnet-07.pt   weights + everything needed to rebuild and run
                                the model (class names, image size, mean/std,
                                config, epoch, seed, that epoch's train stats)
    checkpoints/resume.pt       optimizer and scheduler states, history and
                                the SHA-256 of every epoch checkpoint so far
                                (no RNG states: each epoch is reseeded from
                                (seed, epoch); older files' "rng" is ignored)

Both are written atomically (temp file, fsync, rename), alexnet-NN.pt first,
so resume.pt never names a checkpoint that is not complete on disk. Every load
uses weights_only=True.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from alexnet_pipeline import faults
from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.files import atomic_path, check_regular_file, replace_durably
from alexnet_pipeline.integrity import HashingWriter, intact, known_sha256, record_sha256

log = logging.getLogger(__name__)

FORMAT = "alexnet-pipeline-checkpoint/1"
RESUME_NAME = "resume.pt"
# The next resume state, complete, while its epoch's commit is under way.
PENDING_RESUME_NAME = "resume.pt.next"
_CHECKPOINT_RE = re.compile(r"alexnet-(\d+)\.pt$")


def checkpoint_path(checkpoint_dir: Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"alexnet-{epoch:02d}.pt"


def checkpoint_epoch(path: Path) -> int:
    """7 for .../alexnet-07.pt."""
    return int(_CHECKPOINT_RE.search(Path(path).name).group(1))


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Epoch checkpoints sorted by epoch number (not by name: 100 > 99)."""
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).glob("alexnet-*.pt") if (m := _CHECKPOINT_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, if any. torch.save reports a failed write (a
    full disk, say) as a RuntimeError from its zip writer; given a Python file
    object, the OSError raised by f.write is kept as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _write(obj: Any, tmp: Path) -> str:
    """torch.save `obj` to `tmp`; return the SHA-256 of the bytes written."""
    with open(tmp, "wb") as f:
        writer = HashingWriter(f)
        torch.save(obj, writer)
    return writer.hexdigest()


def commit_epoch(checkpoint_dir: Path, state_dict: dict, meta: dict, resume_state: dict,
                 keep_in_memory: bool = True) -> str:
    """Write one epoch's checkpoint and the resume state that names it as one
    commit; return the checkpoint's SHA-256 (also recorded beside the file).

    Both are complete on disk before either takes its final name: the
    checkpoint is renamed first (the commit point), then the resume state,
    which waits meanwhile as resume.pt.next. A run killed between the two
    renames is completed by `finish_interrupted_commit` on restart, so an
    epoch whose checkpoint is on disk is never trained again.

    `state_dict` holds CPU tensors that nothing changes while they are
    written. With `keep_in_memory` it must be a private copy (a GPU run's
    host copy), kept for the epoch's evaluation; on the CPU the training
    state is written as it is, and evaluation reads the file back through a
    memory map, which costs little."""
    checkpoint_dir = Path(checkpoint_dir)
    epoch = meta["epoch"]
    path = checkpoint_path(checkpoint_dir, epoch)
    pending = checkpoint_dir / PENDING_RESUME_NAME
    ckpt = {"format": FORMAT, "model": state_dict, **meta}
    with _disk_errors(path), atomic_path(path) as checkpoint_tmp:
        sha256 = _write(ckpt, checkpoint_tmp)
        faults.crash_point("checkpoint-write", epoch)
        recorded = {**resume_state.get("checkpoints", {}), epoch: sha256}
        resume_state["checkpoints"] = recorded
        for h in resume_state["history"]:
            h["checkpoint_sha256"] = recorded.get(h["epoch"], "")
        with atomic_path(pending) as resume_tmp:
            _write(resume_state, resume_tmp)
        faults.crash_point("resume-write", epoch)
    # The checkpoint has its name: the epoch is committed.
    with _disk_errors(path):
        record_sha256(path, sha256)
        faults.crash_point("commit", epoch)
        replace_durably(pending, checkpoint_dir / RESUME_NAME)
    if keep_in_memory:
        recent.remember(sha256, ckpt)
    return sha256


def save_epoch_checkpoint(path: Path, state_dict: dict, meta: dict) -> str:
    """Write a checkpoint on its own (no resume state), atomically, keep it
    in memory for its evaluation, and return its SHA-256."""
    ckpt = {"format": FORMAT, "model": state_dict, **meta}
    with _disk_errors(path), atomic_path(path) as tmp:
        sha256 = _write(ckpt, tmp)
    record_sha256(path, sha256)
    recent.remember(sha256, ckpt)
    return sha256


@contextlib.contextmanager
def _disk_errors(path: Path):
    """A failed write (a full disk, say) as one line saying what to do."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        os_error = _os_error(exc)
        if os_error is None:
            raise
        raise CheckpointError(
            f"cannot write {path} ({os_error.strerror or os_error}); earlier checkpoints are intact. "
            "Free some disk space (or use another --out) and run the same command again to resume."
        ) from None


def finish_interrupted_commit(checkpoint_dir: Path) -> None:
    """Complete the commit of an epoch that a killed run left between its two
    renames (see commit_epoch), or undo it if its checkpoint never got its
    name. Call before reading the resume state."""
    pending = Path(checkpoint_dir) / PENDING_RESUME_NAME
    if not pending.exists():
        return
    try:
        state = _load(pending)
        epoch = state["epoch"]
        expected = state["checkpoints"][epoch]
    except (CheckpointError, KeyError, TypeError):
        pending.unlink(missing_ok=True)
        return
    if intact(checkpoint_path(checkpoint_dir, epoch), expected):
        replace_durably(pending, Path(checkpoint_dir) / RESUME_NAME)
        log.info("Completed the commit of epoch %d that a stopped run left unfinished", epoch)
    else:
        pending.unlink(missing_ok=True)


class RecentCheckpoints:
    """Checkpoints this process has just written, by content hash, within a
    small memory budget, each until it is first read: evaluating the latest
    ones right after training needs no reload from disk. Older ones are read
    back through a memory map (from the page cache, usually) instead: holding
    a run's every checkpoint would take 228 MB of host memory per epoch. A
    file whose bytes changed since has another hash, so it is read from disk
    again; nothing here can serve stale weights."""

    def __init__(self, budget_bytes: int | None = None):
        self._budget = budget_bytes
        self._entries: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def budget_bytes(self) -> int:
        if self._budget is None:
            # Two AlexNet checkpoints, or a quarter of the memory available
            # when first asked if that is less.
            self._budget = min(_available_memory_bytes() // 4, MAX_KEPT_BYTES)
        return self._budget

    def remember(self, sha256: str, ckpt: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in ckpt["model"].values() if isinstance(t, torch.Tensor))
        with self._lock:
            if size > self.budget_bytes:
                return
            self._entries[sha256] = (ckpt, size)
            # Oldest out first: with room for k checkpoints, the last k a
            # run wrote are served from memory and the others from disk.
            while sum(s for _, s in self._entries.values()) > self.budget_bytes:
                self._entries.popitem(last=False)

    def take(self, sha256: str | None) -> dict | None:
        """The checkpoint, forgotten here: each checkpoint is evaluated once."""
        with self._lock:
            entry = self._entries.pop(sha256, None) if sha256 else None
            return entry[0] if entry else None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30  # not Linux: assume little


MAX_KEPT_BYTES = 512 << 20
recent = RecentCheckpoints()


def _load(path: Path) -> dict:
    try:
        # torch.load opens the path itself (mmap needs it): a FIFO would block it.
        check_regular_file(path, "checkpoint", CheckpointError)
        # mmap: tensors are paged in from the file (or the page cache) when
        # first used, not copied up front; metadata-only readers touch none.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is damaged or not a checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict: "model" (state_dict, CPU tensors) plus its
    metadata. Read-only: a checkpoint this process just wrote, unchanged on
    disk since, is returned from memory the first time it is asked for."""
    in_memory = recent.take(known_sha256(path))
    if in_memory is not None:
        return in_memory
    ckpt = _load(Path(path))
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline (format {ckpt.get('format')!r}, expected {FORMAT!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", source: str | Path | None = None) -> torch.nn.Module:
    """The model on `device`. Built on the meta device and given the
    checkpoint's tensors: no random initialisation of 57M parameters that
    the weights would overwrite (a third of a second on a CPU)."""
    from alexnet_pipeline.model import new_alexnet

    with torch.device("meta"):
        model = new_alexnet(len(ckpt["class_names"]))
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        # torch's first line is only "Error(s) in loading state_dict": the
        # next one names the layer.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise CheckpointError(
            f"the weights in {source or 'this checkpoint'} do not fit AlexNet with {len(ckpt['class_names'])} "
            f"classes ({detail}); it is damaged or was not written by this pipeline"
        ) from None
    return model.to(device)


def load_resume_state(checkpoint_dir: Path) -> dict | None:
    """The resume state if present and every checkpoint it names is intact."""
    path = Path(checkpoint_dir) / RESUME_NAME
    if not path.exists():
        return None
    try:
        state = _load(path)
    except CheckpointError as exc:
        log.warning("Ignoring %s: %s", path, exc)
        return None
    return state


def read_run_record(path: str | Path) -> dict | None:
    """What a checkpoint or resume.pt says about the run that wrote it
    ("config", "dataset_key", "config_fingerprint", "class_names"; None for what it does not
    record), or None when the file is missing, damaged or not this
    pipeline's. No weights are read: the tensors stay memory-mapped."""
    path = Path(path)
    try:
        obj = _load(path)
    except CheckpointError:
        return None
    if path.name != RESUME_NAME and obj.get("format") != FORMAT:
        return None
    return {key: obj.get(key) for key in ("config", "dataset_key", "config_fingerprint", "class_names")}


def remove_partial_files(checkpoint_dir: Path) -> None:
    """Temporary files left by a run that was killed while writing."""
    for partial in Path(checkpoint_dir).glob(".*.partial"):
        partial.unlink(missing_ok=True)
