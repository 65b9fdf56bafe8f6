"""One evaluate() for every checkpoint: loss, top-1, per-class accuracy and
the confusion matrix. It returns numbers and writes nothing.

    from alexnet_pipeline.evaluate import evaluate_checkpoint
    result = evaluate_checkpoint("runs/x/checkpoints/alexnet-07.pt", dataset_dir, device="auto")
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alexnet_pipeline import faults
from alexnet_pipeline.cache import load_arrays, read_meta
from alexnet_pipeline.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet_pipeline.data import balanced_subset, validation_split
from alexnet_pipeline.device_data import DeviceDataset, resolve_device
from alexnet_pipeline.errors import CheckpointError, DeviceMemoryError
from alexnet_pipeline.transforms import BatchTransform
from alexnet_pipeline.versions import EVALUATE_VERSION  # noqa: F401 - the task's cache key; bump it there


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    num_images: int


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: BatchTransform,
             num_classes: int, batch_size: int) -> EvalResult:
    """`images` uint8 (N, S, S, 3) and `labels` already on the model's device;
    the test set is read in its stored order (no shuffling)."""
    batches = ((images[start:start + batch_size], labels[start:start + batch_size])
               for start in range(0, len(labels), batch_size))
    return evaluate_batches(model, batches, transform, num_classes)


def prepared_model(ckpt: dict, device: torch.device, source: str | Path | None = None
                   ) -> tuple[torch.nn.Module, BatchTransform]:
    """The checkpoint's model on `device`, in eval mode, and the transform
    that turns its uint8 images into the model's input (size, mean and std
    from the checkpoint). Evaluation and prediction both use this pair."""
    model = model_from_checkpoint(ckpt, device, source=source)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = BatchTransform(int(ckpt["image_size"]), ckpt["mean"], ckpt["std"], device, channels_last)
    return model.eval(), transform


def batch_logits(model: torch.nn.Module, x_uint8: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
    """Logits of a uint8 NHWC batch on the model's device: bfloat16 autocast
    on CUDA, float32 elsewhere (the one forward pass evaluation and
    prediction share, so both score an image the same)."""
    x = transform(x_uint8)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if x.device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        return model(x)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     transform: BatchTransform, num_classes: int) -> EvalResult:
    """The one evaluation loop: uint8 image batches and their labels on the
    model's device in, the numbers out. Totals stay on the device until the
    end (one sync per evaluation, not one per batch)."""
    model.eval()
    loss_sum = confusion = None
    for x_uint8, y in batches:
        if confusion is None:
            device = y.device
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
        logits = batch_logits(model, x_uint8, transform)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        # scatter_add_, not bincount: bincount reads its input's range back
        # to the host on CUDA, a sync per batch.
        cells = y * num_classes + logits.argmax(1)
        confusion.scatter_add_(0, cells, torch.ones_like(cells))
    if confusion is None:
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        loss_total = 0.0
    else:
        matrix = confusion.view(num_classes, num_classes).cpu().numpy()  # the one sync
        loss_total = float(loss_sum.item())
    per_class_total = matrix.sum(1)
    per_class = np.divide(np.diag(matrix), per_class_total, out=np.zeros(num_classes), where=per_class_total > 0)
    n = int(matrix.sum())
    return EvalResult(
        loss=loss_total / max(n, 1),
        accuracy=float(np.trace(matrix) / max(n, 1)),
        per_class_accuracy=[float(v) for v in per_class],
        confusion=matrix.astype(int).tolist(),
        num_images=n,
    )


_eval_sets: dict[tuple, DeviceDataset] = {}
_eval_sets_lock = threading.Lock()


def eval_set_on_device(dataset_dir: Path, split: str, subset: int | None, device: torch.device,
                       val_fraction: float = 0.0) -> DeviceDataset:
    """The images and labels of `split` ("test", or "val": an image folder's
    own val/, else the validation split held out of the training images,
    data.validation_split) for
    `device`, prepared once per process (every checkpoint is scored on the
    same images): held on the device as uint8 when they fit, else streamed
    from the memory-mapped cache like training data."""
    key = (str(Path(dataset_dir).resolve()), read_meta(dataset_dir)["key"], split, subset, val_fraction, str(device))
    with _eval_sets_lock:
        if key not in _eval_sets:
            arrays = load_arrays(dataset_dir)
            if split == "test":
                images, labels, pool = arrays.test_images, arrays.test_labels, np.arange(len(arrays.test_labels))
            elif arrays.val_images is not None:  # the image folder's own val/
                images, labels, pool = arrays.val_images, arrays.val_labels, np.arange(len(arrays.val_labels))
            else:
                images, labels = arrays.train_images, arrays.train_labels
                pool = validation_split(labels, val_fraction, len(arrays.class_names))[1]
            keep = pool[balanced_subset(labels[pool], subset, len(arrays.class_names))]
            _eval_sets[key] = DeviceDataset(images, labels, keep, device)
        return _eval_sets[key]


def evaluate_checkpoint(checkpoint: str | Path, dataset_dir: str | Path, device: str = "auto",
                        subset: int | None = None, batch_size: int = 1000,
                        image_size: int | None = None) -> EvalResult:
    """Rebuild the model from the checkpoint file alone and evaluate it on the
    cached test set; refuse a checkpoint made for other classes, or for
    another input size than `image_size` when the caller names one."""
    return evaluate_splits(checkpoint, dataset_dir, device, subset, batch_size, image_size, splits=("test",))["test"]


def evaluate_splits(checkpoint: str | Path, dataset_dir: str | Path, device: str = "auto",
                    subset: int | None = None, batch_size: int = 1000, image_size: int | None = None,
                    splits: tuple[str, ...] = ("val", "test")) -> dict[str, EvalResult]:
    """evaluate_checkpoint on each of `splits`, the model built once. "val"
    is left out for a run trained without a validation split (its
    checkpoint's config says which images were held out)."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    faults.crash_point("evaluate", int(ckpt["epoch"]))
    class_names = read_meta(dataset_dir)["class_names"]
    if list(ckpt["class_names"]) != list(class_names):
        raise CheckpointError(
            f"{checkpoint} was trained on {len(ckpt['class_names'])} classes ({', '.join(ckpt['class_names'][:5])}...) "
            f"but the test set has {len(class_names)} ({', '.join(class_names[:5])}...); evaluate it on the dataset it was trained on"
        )
    if image_size is not None and int(ckpt["image_size"]) != image_size:
        raise CheckpointError(
            f"{checkpoint} was trained on {ckpt['image_size']}x{ckpt['image_size']} inputs, but evaluation was asked "
            f"for {image_size}x{image_size}; evaluate it at image size {ckpt['image_size']}, or pick a checkpoint "
            f"trained at {image_size}"
        )
    model, transform = prepared_model(ckpt, dev, source=checkpoint)
    val_fraction = float(((ckpt.get("config") or {}).get("data") or {}).get("val_fraction") or 0.0)
    own_val = bool(read_meta(dataset_dir).get("num_val"))  # an image folder's val/: always the split
    results = {}
    try:
        for split in splits:
            if split == "val" and val_fraction == 0 and not own_val:
                continue
            eval_set = eval_set_on_device(Path(dataset_dir), split, subset, dev, val_fraction)
            in_stored_order = torch.arange(eval_set.count)
            batches = ((images, labels) for images, labels, _ in eval_set.batches(in_stored_order, batch_size))
            results[split] = evaluate_batches(model, batches, transform, len(class_names))
        return results
    except torch.cuda.OutOfMemoryError:
        raise DeviceMemoryError(
            f"the GPU ran out of memory evaluating {checkpoint} in batches of {batch_size}; set a smaller "
            f"train.eval_batch_size (e.g. {max(1, batch_size // 4)}) in a --config file, or evaluate with --device cpu"
        ) from None
