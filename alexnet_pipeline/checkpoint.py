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

import logging
import re
from pathlib import Path
from typing import Any

import torch

from alexnet_pipeline import faults
from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.files import atomic_path, sha256_file

log = logging.getLogger(__name__)

FORMAT = "alexnet-pipeline-checkpoint/1"
RESUME_NAME = "resume.pt"
_CHECKPOINT_RE = re.compile(r"alexnet-(\d+)\.pt$")


def checkpoint_path(checkpoint_dir: Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"alexnet-{epoch:02d}.pt"


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


def _save(obj: Any, path: Path, crash_name: str, epoch: int) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
            faults.crash_point(crash_name, epoch)
    except (OSError, RuntimeError) as exc:
        os_error = _os_error(exc)
        if os_error is None:
            raise
        raise CheckpointError(
            f"cannot write {path} ({os_error.strerror or os_error}); earlier checkpoints are intact. "
            "Free some disk space (or use another --out) and run the same command again to resume."
        ) from None


def save_epoch_checkpoint(path: Path, state_dict: dict, meta: dict) -> str:
    """Write one epoch's checkpoint; return its SHA-256."""
    _save({"format": FORMAT, "model": state_dict, **meta}, path, "checkpoint-write", meta["epoch"])
    return sha256_file(path)


def save_resume_state(checkpoint_dir: Path, state: dict) -> None:
    _save(state, Path(checkpoint_dir) / RESUME_NAME, "resume-write", state["epoch"])


def _load(path: Path, map_location) -> dict:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is damaged or not a checkpoint") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline")
    return obj


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict: "model" (state_dict) plus its metadata."""
    ckpt = _load(Path(path), map_location)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline (format {ckpt.get('format')!r}, expected {FORMAT!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    from alexnet_pipeline.model import new_alexnet

    model = new_alexnet(len(ckpt["class_names"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"the weights in this checkpoint do not fit AlexNet with {len(ckpt['class_names'])} classes ({detail}); "
            "it is damaged or was not written by this pipeline"
        ) from None
    return model


def load_resume_state(checkpoint_dir: Path) -> dict | None:
    """The resume state if present and every checkpoint it names is intact."""
    path = Path(checkpoint_dir) / RESUME_NAME
    if not path.exists():
        return None
    try:
        state = _load(path, "cpu")
    except CheckpointError as exc:
        log.warning("Ignoring %s: %s", path, exc)
        return None
    return state


def verify_checkpoint(path: Path, expected_sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == expected_sha256


def remove_partial_files(checkpoint_dir: Path) -> None:
    """Temporary files left by a run that was killed while writing."""
    for partial in Path(checkpoint_dir).glob(".*.partial"):
        partial.unlink(missing_ok=True)
