from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.integrity import intact
from alexnet_pipeline.versions import TRAIN_VERSION
from tasks.caching import by_fingerprint

if TYPE_CHECKING:
    from alexnet_pipeline.train import EpochStats


def train_run(*args, **kwargs):
    """alexnet_pipeline.train.train_run, imported when training runs: it
    imports torch (seconds), which a cache hit does not need. A function of
    that name, so that the task's source (part of its cache key) is unchanged."""
    from alexnet_pipeline.train import train_run

    return train_run(*args, **kwargs)


@task(name="fine-tune", cache_policy=by_fingerprint("fine-tune", TRAIN_VERSION), persist_result=True)
def fine_tune(config: PipelineConfig, dataset_dir: str, run_dir: str, config_fingerprint: str) -> list[dict]:
    """Train (or resume) and return one dict of stats per epoch, each naming
    its checkpoint. The library resumes from the run folder's last complete
    epoch, so a re-run after a crash redoes at most the epoch in progress.
    The cache key is `config_fingerprint`, not `config`: it covers every
    setting that changes results and what `config` only names, such as the
    content of a --weights file. `config` is the flow's own, already checked."""
    cfg = config
    logger = get_run_logger()
    epochs = cfg.train.epochs
    artifact = create_progress_artifact(0.0, key="training-progress", description=f"Fine-tuning {epochs} epochs")

    def report_epoch(stats: EpochStats) -> None:
        logger.info(
            "epoch %d/%d: train loss %.4f, train acc %.2f%%, lr %.3g, %.1f s (%.0f images/s)",
            stats.epoch, epochs, stats.train_loss, stats.train_acc * 100, stats.lr, stats.epoch_seconds, stats.images_per_s,
        )
        update_progress_artifact(artifact, 100.0 * stats.epoch / epochs, description=f"epoch {stats.epoch} of {epochs} done")

    history = train_run(cfg, Path(dataset_dir), Path(run_dir), on_epoch_end=report_epoch)
    update_progress_artifact(artifact, 100.0, description=f"{epochs} epochs done")
    return [dataclasses.asdict(h) for h in history]


def still_valid(history: list[dict]) -> bool:
    """Every checkpoint is still there with the bytes it was written with.
    If one is missing or damaged the task runs again: train_run finds the same
    mismatch, warns, and redoes it, so a damaged file is never evaluated."""
    return all(intact(h["checkpoint"], h["checkpoint_sha256"]) if h.get("checkpoint_sha256")
               else Path(h["checkpoint"]).is_file() for h in history)
