"""Feeding uint8 batches to the training device.

Two modes, same batches:
- resident: the whole (subset of the) dataset is copied to the device once as
  uint8 (CIFAR-10's 50,000 images are 150 MB), and a batch is one gather there;
- streamed: for data larger than the device may hold, each batch is gathered
  from the memory-mapped cache on the host by a background thread into pinned
  memory and copied asynchronously, overlapping the previous step's compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alexnet_pipeline.errors import ConfigError

# Share of free GPU memory the resident copy may take; the rest is for the model.
RESIDENT_SHARE = 0.4
# On the CPU the "device" is host RAM: copy the (subset of the) data out of
# the memory map unless told otherwise (tests set 0 to take the streamed path).
HOST_RESIDENT_LIMIT = 1 << 62


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


class DeviceDataset:
    def __init__(self, images: np.ndarray, labels: np.ndarray, keep: np.ndarray, device: torch.device,
                 resident_limit_bytes: int | None = None):
        self.device = device
        self.count = len(keep)
        nbytes = self.count * int(np.prod(images.shape[1:]))
        if resident_limit_bytes is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                resident_limit_bytes = int(free * RESIDENT_SHARE)
            else:
                resident_limit_bytes = HOST_RESIDENT_LIMIT
        self.resident = nbytes <= resident_limit_bytes
        self.labels = torch.from_numpy(np.asarray(labels[keep], dtype=np.int64)).to(device)
        if self.resident:
            host = torch.from_numpy(np.ascontiguousarray(images[keep]))
            self.images = host.to(device)
            self._host_images = None
            self._keep = None
        else:
            self.images = None
            self._host_images = images  # memory-mapped; never loaded whole
            self._keep = keep

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images NHWC, labels, dataset indices) on the device,
        in the order `order` (CPU) gives. The order is copied to the device
        once: a per-step copy from pageable host memory would wait for the
        GPU to finish the previous step (a hidden sync)."""
        order_dev = order.to(self.device)
        starts = range(0, len(order), batch_size)
        if self.resident:
            for start in starts:
                index = order_dev[start:start + batch_size]
                yield self.images[index], self.labels[index], index
            return
        host_batches = self._streamed([order[start:start + batch_size] for start in starts])
        for start, host in zip(starts, host_batches):
            index = order_dev[start:start + batch_size]
            yield host.to(self.device, non_blocking=True), self.labels[index], index

    def _gather_host(self, index: torch.Tensor) -> torch.Tensor:
        rows = self._keep[index.numpy()]
        # Reading the memory map in ascending order is sequential I/O; the
        # inverse permutation puts the images back in batch order.
        sort = np.argsort(rows, kind="stable")
        block = np.empty((len(rows),) + self._host_images.shape[1:], dtype=np.uint8)
        block[sort] = self._host_images[rows[sort]]
        batch = torch.from_numpy(block)
        # Pinned: the copy to the GPU is then truly asynchronous.
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def _streamed(self, positions: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Host batches gathered by a background thread, one ahead of use."""
        if not positions:
            return
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch-prefetch") as pool:
            pending = [pool.submit(self._gather_host, positions[0])]
            for i in range(len(positions)):
                if i + 1 < len(positions):
                    pending.append(pool.submit(self._gather_host, positions[i + 1]))
                yield pending.pop(0).result()
