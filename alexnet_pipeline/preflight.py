"""Checks that take a second and save an hour: run before any stage starts,
so a wrong path or an unusable folder is reported at once."""

from __future__ import annotations

from pathlib import Path

from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.data import ImageFolderSource
from alexnet_pipeline.errors import WeightsError


def check_inputs(cfg: PipelineConfig) -> None:
    weights = cfg.model.weights
    if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
        raise WeightsError(
            f"--weights {weights}: no such file; give a torchvision-format AlexNet state_dict, 'imagenet' or 'none'"
        )
    if cfg.data.dataset == "imagefolder":
        # Scanning finds a missing folder, empty classes or mismatched class sets.
        ImageFolderSource(Path(cfg.data.data_dir), workers=cfg.data.decode_workers)
