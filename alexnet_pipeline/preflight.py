"""Checks that take a second and save an hour: run before any stage starts,
so a wrong path or an unusable folder is reported at once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from alexnet_pipeline.config import PipelineConfig, TrainConfig
from alexnet_pipeline.data import ImageFolderSource, balanced_subset
from alexnet_pipeline.download import check_cifar10_reachable
from alexnet_pipeline.errors import ConfigError


def check_inputs(cfg: PipelineConfig) -> int:
    """Raise what is wrong with the inputs; return the number of training
    images a run will use."""
    # alexnet_pipeline.model imports torch (seconds): only for the checks of
    # weights, so that other refusals and --weights none do not wait for it.
    weights = cfg.model.weights
    if weights not in ("imagenet", "none"):
        # A second to load now rather than after download and preprocessing:
        # refuses a missing file, a FIFO or a folder, a file that is not a
        # state_dict, has other shapes or dtypes, holds NaN, or would run
        # code when unpickled.
        from alexnet_pipeline.model import build_alexnet

        build_alexnet(2, weights)
    if cfg.data.dataset == "cifar10":
        check_crop_padding(cfg.train, 32)
        check_cifar10_reachable(cfg.data.data_dir, cfg.data.url)
        count = min(cfg.data.subset or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)
    if cfg.data.dataset == "imagefolder":
        # Scanning finds a missing folder, empty classes or mismatched class sets.
        source = ImageFolderSource(Path(cfg.data.data_dir), workers=cfg.data.decode_workers)
        labels = np.array([label for _, label in source.train_files], dtype=np.int64)
        count = len(balanced_subset(labels, cfg.data.subset, len(source.class_names)))
        if cfg.train.batch_size > count:
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} is larger than the {count} training images "
                f"in {source.root / 'train'}; use a smaller --batch-size"
            )
    if weights == "imagenet":
        from alexnet_pipeline.model import check_imagenet_weights_reachable

        check_imagenet_weights_reachable()
    return count


def check_crop_padding(t: TrainConfig, stored_side: int) -> None:
    """Random crops come from a reflect-padded image: the padding must be
    smaller than the image it pads."""
    if t.augment and t.crop_padding >= stored_side:
        raise ConfigError(
            f"train.crop_padding: {t.crop_padding} is not smaller than the stored images' side ({stored_side} px); "
            f"use at most {stored_side - 1} (4 is usual for 32x32 images), or augment: false"
        )


CIFAR10_TRAIN_IMAGES = 50_000
# Below this many input pixels per epoch (the smoke preset: 1,000 images at
# 64x64 is 4.1M) a CPU run is short enough to need no estimate.
CPU_ESTIMATE_ABOVE_PIXELS = 20_000_000
# An epoch at least this long on the CPU gets a warning.
CPU_WARNING_SECONDS = 600.0


def cpu_training_warning(cfg: PipelineConfig, train_images: int) -> str | None:
    """On a machine without a GPU (or with --device cpu), a run whose epochs
    would take long says so before it starts, with a time measured on one
    training step here and how to pick a smaller run; else None."""
    import time

    t = cfg.train
    if train_images * t.image_size**2 < CPU_ESTIMATE_ABOVE_PIXELS:  # a small run: no torch to import (seconds)
        return None

    import torch

    from alexnet_pipeline.device_data import resolve_device
    from alexnet_pipeline.model import new_alexnet

    if resolve_device(t.device).type != "cpu":
        return None
    model, batch = new_alexnet(10), 4
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(batch, 3, t.image_size, t.image_size), torch.zeros(batch, dtype=torch.long)
    for step in range(2):  # the first step pays for allocation
        started = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    epoch_s = (time.perf_counter() - started) / batch * train_images
    if epoch_s < CPU_WARNING_SECONDS:
        return None
    return (f"no GPU in use: {train_images:,} training images at {t.image_size}x{t.image_size} take about "
            f"{_duration(epoch_s)} per epoch on this CPU ({_duration(epoch_s * t.epochs)} for {t.epochs} epochs; "
            "estimated from one training step here). For a short demonstration: --preset smoke; or fewer and "
            "smaller images: --subset 1000 --image-size 64. Ctrl-C stops it; the same command resumes.")


# Fewer optimizer steps than this per epoch and the schedule (warm-up, cosine
# decay) has almost nothing to work with: a small image folder at the default
# batch size of 256 learns next to nothing, with no other sign of why.
MIN_STEPS_PER_EPOCH = 10


def few_steps_warning(t: TrainConfig, train_images: int) -> str | None:
    """A run whose epochs hold fewer than MIN_STEPS_PER_EPOCH optimizer steps
    says so, with the largest power-of-two batch size that gives enough; else None."""
    steps = math.ceil(train_images / t.batch_size)
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    images = f"{train_images:,} training image{'s' if train_images != 1 else ''}"
    message = (f"{images} at batch size {t.batch_size} make {steps} optimizer step{'s' if steps != 1 else ''} "
               "per epoch, too few to learn much")
    smaller = 1 << (t.batch_size.bit_length() - 1)  # the largest power of two up to the batch size
    while smaller > 1 and math.ceil(train_images / smaller) < MIN_STEPS_PER_EPOCH:
        smaller //= 2
    if smaller < t.batch_size and math.ceil(train_images / smaller) >= MIN_STEPS_PER_EPOCH:
        return message + (f"; pass --batch-size {smaller} ({math.ceil(train_images / smaller)} steps; "
                          "the default lr scales with it)")
    return message + f"; even batch size 1 makes only {train_images}: more images, or more epochs, would help"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
