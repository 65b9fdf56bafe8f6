"""Self-describing checkpoints and the rolling resume state.

    checkpoints/alexnet-07.pt   weights + everything needed to rebuild and run
                                the model (class names, image size, mean/std,
                                config, epoch, seed, that epoch's train stats)
    checkpoints/resume.pt       optimizer, scheduler and RNG states, history and
                                the SHA-256 of every epoch checkpoint so far

Both are written atomically (temp file, fsync, rename), alexnet-NN.pt first,
so resume.pt never names a checkpoint that is not complete on disk. Every load
uses weights_only=True.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from alexnet_pipeline import faults
from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.files import atomic_path, known_sha256, remember_sha256, sha256_file

log = logging.getLogger(__name__)

FORMAT = "alexnet-pipeline-checkpoint/1"
RESUME_NAME = "resume.pt"
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


class _HashingWriter:
    """A file object that hashes what torch.save writes through it: the
    checkpoint's SHA-256 without reading ~228 MB back."""

    def __init__(self, f):
        self._f = f
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _save(obj: Any, path: Path, crash_name: str, epoch: int) -> str:
    """Write `obj` atomically; return the SHA-256 of the bytes written."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                torch.save(obj, writer)
            faults.crash_point(crash_name, epoch)
    except (OSError, RuntimeError) as exc:
        os_error = _os_error(exc)
        if os_error is None:
            raise
        raise CheckpointError(
            f"cannot write {path} ({os_error.strerror or os_error}); earlier checkpoints are intact. "
            "Free some disk space (or use another --out) and run the same command again to resume."
        ) from None
    return remember_sha256(path, writer.digest.hexdigest())


def save_epoch_checkpoint(path: Path, state_dict: dict, meta: dict) -> str:
    """Write one epoch's checkpoint and keep it in memory for its evaluation;
    return its SHA-256. `state_dict` must be a private copy (CPU tensors that
    nothing changes afterwards): it is what evaluation will read."""
    ckpt = {"format": FORMAT, "model": state_dict, **meta}
    sha256 = _save(ckpt, path, "checkpoint-write", meta["epoch"])
    recent.remember(sha256, ckpt)
    return sha256


def save_resume_state(checkpoint_dir: Path, state: dict) -> None:
    _save(state, Path(checkpoint_dir) / RESUME_NAME, "resume-write", state["epoch"])


class RecentCheckpoints:
    """Checkpoints this process has just written, by content hash, within a
    memory budget: evaluating them right after training needs no reload from
    disk. A file whose bytes changed since has another hash, so it is read
    from disk again; nothing here can serve stale weights."""

    def __init__(self, budget_bytes: int | None = None):
        self._budget = budget_bytes
        self._entries: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def budget_bytes(self) -> int:
        if self._budget is None:
            # A quarter of the memory available when first asked, at most
            # 8 GiB (35 AlexNet checkpoints): training and the page cache
            # keep the rest.
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

    def get(self, sha256: str | None) -> dict | None:
        with self._lock:
            entry = self._entries.get(sha256) if sha256 else None
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


MAX_KEPT_BYTES = 8 << 30
recent = RecentCheckpoints()


def _load(path: Path) -> dict:
    try:
        # mmap: tensors are paged in from the file (or the page cache) when
        # first used, not copied up front; metadata-only readers touch none.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is damaged or not a checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict: "model" (state_dict, CPU tensors) plus its
    metadata. Read-only: a checkpoint this process wrote, unchanged on disk
    since, is returned from memory and shared with other readers."""
    in_memory = recent.get(known_sha256(path))
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
    ("config", "dataset_key", "config_fingerprint"; None for what it does not
    record), or None when the file is missing, damaged or not this
    pipeline's. No weights are read: the tensors stay memory-mapped."""
    path = Path(path)
    try:
        obj = _load(path)
    except CheckpointError:
        return None
    if path.name != RESUME_NAME and obj.get("format") != FORMAT:
        return None
    return {key: obj.get(key) for key in ("config", "dataset_key", "config_fingerprint")}


def verify_checkpoint(path: Path, expected_sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == expected_sha256


def remove_partial_files(checkpoint_dir: Path) -> None:
    """Temporary files left by a run that was killed while writing."""
    for partial in Path(checkpoint_dir).glob(".*.partial"):
        partial.unlink(missing_ok=True)
