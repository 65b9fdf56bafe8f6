"""Checkpoints written on a background thread while training goes on.

    writer = CheckpointWriter(max_pending=2)
    writer.wait_for_room()                      # before the next snapshot is taken
    state = Snapshot.private({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    writer.submit(write_epoch, checkpoint_dir, epoch, state, meta, resume_state, written)
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


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _to_pinned_host(tensor: torch.Tensor) -> torch.Tensor:
    try:
        host = torch.empty_like(tensor, device="cpu", pin_memory=True)
    except RuntimeError:  # no page-locked memory to be had: the slower pageable copy
        return tensor.to("cpu", copy=True)
    return host.copy_(tensor)


class Snapshot:
    """One epoch's training state (weights and optimizer state), handed from
    the training loop to the checkpoint writer.

    `Snapshot.private(state)` copies every tensor where it lives, so that
    training may go on changing the originals. On a GPU that copy is device
    to device (AlexNet's 0.7 GB in well under a millisecond of GPU time),
    queued behind the epoch's last step, so the training thread does not
    wait for it; the writer thread then brings it to the host (`to_host`) on
    a stream of its own, into page-locked memory (a direct DMA), while the
    next epoch trains. Why: copying straight to pageable host memory from
    the training thread cost 15.4 s of a 30-epoch run on an H200 (0.5 s per
    1.6 s epoch), the largest cost after the training steps themselves.

    `Snapshot.as_it_is(state)` is the live state, for a writer that runs
    between epochs (the CPU: see train.train_run)."""

    def __init__(self, state: dict, ready: torch.cuda.Event | None = None, device: torch.device | None = None):
        self._state: dict | None = state
        # The GPU the copy lives on, and an event recorded after the copy
        # (both None when the state is already in host memory).
        self._ready, self._device = ready, device

    @classmethod
    def private(cls, state: dict) -> Snapshot:
        copy = _map_tensors(state, lambda t: t.detach().clone())
        devices = {t.device for t in _tensors(copy) if t.device.type == "cuda"}
        if not devices:
            return cls(copy)
        if len(devices) > 1:  # not a layout this pipeline makes (one device per run)
            raise ValueError(f"training state spread over {sorted(map(str, devices))}")
        device = devices.pop()
        return cls(copy, torch.cuda.current_stream(device).record_event(), device)

    @classmethod
    def as_it_is(cls, state: dict) -> Snapshot:
        return cls(state)

    def to_host(self) -> dict:
        """The state in host memory; the device copy, if any, is released.
        May be called once, from any thread."""
        state, self._state = self._state, None
        if state is None:
            raise RuntimeError("Snapshot.to_host() called twice")
        if self._ready is None:
            return state
        with torch.cuda.device(self._device):
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                stream.wait_event(self._ready)
                # Synchronous copies on `stream`: each has finished when it
                # returns, so dropping the device copy afterwards is safe.
                return _map_tensors(state, lambda t: _to_pinned_host(t) if t.device.type == "cuda" else t)


def _tensors(obj) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map_tensors(obj, found.append)
    return found


class CheckpointWriter:
    """Writes checkpoints in order on one background thread; the training loop
    only pays for a snapshot of the state. `drain()` re-raises a failed write.
    With max_pending=0 it writes on the caller's thread instead."""

    def __init__(self, max_pending: int = 2):
        """`max_pending` 0: no thread; each write runs inside submit(), so
        the state may be written as it is, without a copy."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer") if max_pending else None
        self._pending: list[Future] = []
        # Each pending epoch holds a copy of the weights and optimizer state
        # (~0.7 GB for AlexNet, on the device until the writer takes it to
        # the host): on a disk slower than training, wait rather than let
        # them pile up.
        self._max_pending = max_pending
        # What the disk gave and what training paid for it (the run's log
        # line "checkpoint writer: ..."): a writer slower than training shows
        # up as waited_seconds.
        self.waited_seconds = 0.0
        self.write_seconds = 0.0
        self.bytes_written = 0

    def wait_for_room(self) -> None:
        """Block until another write may be queued. Called before the
        snapshot for the next write is taken, so at most `max_pending` copies
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

    def summary(self, epochs: int, snapshot_seconds: float) -> str:
        rate = self.bytes_written / self.write_seconds / 1e9 if self.write_seconds else 0.0
        return (f"checkpoint writer: {epochs} epochs, {self.bytes_written / 1e9:.2f} GB written in "
                f"{self.write_seconds:.1f} s ({rate:.2f} GB/s); training waited {self.waited_seconds:.2f} s "
                f"for it and {snapshot_seconds:.2f} s taking snapshots of the state")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def write_epoch(checkpoint_dir: Path, epoch: int, snapshot: Snapshot, meta: dict, resume_state: dict,
                 written: dict[int, str], keep_in_memory: bool = True) -> int:
    """Runs on the writer thread, which alone updates `written` (epoch ->
    SHA-256). `snapshot` holds {"model": ..., "optimizer": ...} state
    dicts. Returns the bytes written."""
    state = snapshot.to_host()
    resume_state["optimizer"] = state["optimizer"]
    resume_state["checkpoints"] = dict(written)
    written[epoch] = ckpt_io.commit_epoch(checkpoint_dir, state["model"], meta, resume_state, keep_in_memory)
    faults.crash_point("after-checkpoint", epoch)
    return (ckpt_io.checkpoint_path(checkpoint_dir, epoch).stat().st_size
            + (checkpoint_dir / ckpt_io.RESUME_NAME).stat().st_size)
