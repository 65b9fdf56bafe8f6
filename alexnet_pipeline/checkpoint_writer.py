"""Checkpoints written on a background thread while training goes on.

    writer = CheckpointWriter(max_pending=1)
    writer.wait_for_room()                      # before copying the state to the host
    writer.submit(write_epoch, checkpoint_dir, epoch, to_cpu(model.state_dict()), meta, resume_state, written)
    writer.drain()                              # re-raises a failed write

Each epoch is one commit (checkpoint.commit_epoch): the checkpoint and the
resume state naming it are both complete on disk before either is renamed,
the checkpoint's hash recorded beside it in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from alexnet_pipeline import checkpoint as ckpt_io
from alexnet_pipeline import faults


def to_cpu(obj):
    """Deep copy of a (nested) state to CPU memory, so a background thread can
    write it while training goes on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in order on one background thread; the training loop
    only pays for a copy of the state. `drain()` re-raises a failed write.
    With max_pending=0 it writes on the caller's thread instead."""

    def __init__(self, max_pending: int = 2):
        """`max_pending` 0: no thread; each write runs inside submit(), so
        the state may be written as it is, without a copy."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer") if max_pending else None
        self._pending: list[Future] = []
        # Each pending epoch holds a host copy of the weights and optimizer
        # state (~0.7 GB for AlexNet): on a disk slower than training, wait
        # rather than let them pile up.
        self._max_pending = max_pending
        # What the disk gave and what training paid for it (the run's log
        # line "checkpoint writer: ..."): a writer slower than training shows
        # up as waited_seconds.
        self.waited_seconds = 0.0
        self.write_seconds = 0.0
        self.bytes_written = 0

    def wait_for_room(self) -> None:
        """Block until another write may be queued. Called before the host
        copy for the next write is made, so at most `max_pending` copies
        exist at any time."""
        self._raise_failures()
        started = time.perf_counter()
        while self._pending and len(self._pending) >= self._max_pending:
            self._pending.pop(0).result()
        self.waited_seconds += time.perf_counter() - started

    def submit(self, fn: Callable, *args) -> Future:
        """`fn` may return the number of bytes it wrote, for the statistics."""
        self.wait_for_room()
        if self._pool is None:
            future: Future = Future()
            started = time.perf_counter()
            try:
                future.set_result(self._timed(fn, *args))
            finally:
                self.waited_seconds += time.perf_counter() - started
            return future
        future = self._pool.submit(self._timed, fn, *args)
        self._pending.append(future)
        return future

    def _timed(self, fn: Callable, *args):
        started = time.perf_counter()
        written = fn(*args)
        self.write_seconds += time.perf_counter() - started
        if isinstance(written, int):
            self.bytes_written += written
        return written

    def _raise_failures(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()

    def drain(self) -> None:
        started = time.perf_counter()
        try:
            for future in self._pending:
                future.result()
        finally:
            self.waited_seconds += time.perf_counter() - started
        self._pending.clear()

    def summary(self, epochs: int, copy_seconds: float) -> str:
        rate = self.bytes_written / self.write_seconds / 1e9 if self.write_seconds else 0.0
        return (f"checkpoint writer: {epochs} epochs, {self.bytes_written / 1e9:.2f} GB written in "
                f"{self.write_seconds:.1f} s ({rate:.2f} GB/s); training waited {self.waited_seconds:.2f} s "
                f"for it and {copy_seconds:.2f} s copying state to the host")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def write_epoch(checkpoint_dir: Path, epoch: int, model_state: dict, meta: dict, resume_state: dict,
                 written: dict[int, str], keep_in_memory: bool = True) -> int:
    """Runs on the writer thread, which alone updates `written` (epoch ->
    SHA-256). Returns the bytes written."""
    resume_state["checkpoints"] = dict(written)
    written[epoch] = ckpt_io.commit_epoch(checkpoint_dir, model_state, meta, resume_state, keep_in_memory)
    faults.crash_point("after-checkpoint", epoch)
    return (ckpt_io.checkpoint_path(checkpoint_dir, epoch).stat().st_size
            + (checkpoint_dir / ckpt_io.RESUME_NAME).stat().st_size)
