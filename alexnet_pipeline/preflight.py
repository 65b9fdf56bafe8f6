"""Checks that take a second and save an hour: run before any stage starts,
so a wrong path or an unusable folder is reported at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.data import ImageFolderSource, balanced_subset
from alexnet_pipeline.download import check_cifar10_reachable
from alexnet_pipeline.errors import ConfigError, WeightsError
from alexnet_pipeline.model import build_alexnet, check_imagenet_weights_reachable
from alexnet_pipeline.train import check_crop_padding


def check_inputs(cfg: PipelineConfig) -> None:
    weights = cfg.model.weights
    if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
        raise WeightsError(
            f"--weights {weights}: no such file; give a torchvision-format AlexNet state_dict, 'imagenet' or 'none'"
        )
    if weights not in ("imagenet", "none"):
        # A second to load now rather than after download and preprocessing:
        # refuses a file that is not a state_dict, has other shapes, or would
        # run code when unpickled.
        build_alexnet(2, weights)
    if cfg.data.dataset == "cifar10":
        check_crop_padding(cfg.train, 32)
        check_cifar10_reachable(cfg.data.data_dir, cfg.data.url)
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
        check_imagenet_weights_reachable()
