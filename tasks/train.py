from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.record import RunRecord
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
def fine_tune(config: PipelineConfig, dataset_dir: str, run_dir: str, config_fingerprint: str) -> dict:
    """Train (or resume), evaluating each checkpoint on the validation split
    and the test set as soon as it is committed; returns the run record's
    summary (alexnet_pipeline.record.RunRecord.summary: a row per epoch, the
    selected epoch and its full test result). The library resumes from the
    run folder's last complete epoch, so a re-run after a crash redoes at
    most the epoch in progress. The cache key is `config_fingerprint`, not
    `config`: it covers every setting that changes results and what `config`
    only names, such as the content of a --weights file. `config` is the
    flow's own, already checked."""
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

    train_run(cfg, Path(dataset_dir), Path(run_dir), on_epoch_end=report_epoch)
    update_progress_artifact(artifact, 100.0, description=f"{epochs} epochs done")
    return {**RunRecord.load(run_dir).summary(), "run_dir": str(run_dir)}


def still_valid(summary: dict) -> bool:
    """The run folder still holds the finished record this result came from,
    and no kept checkpoint was changed since (a damaged model is made
    again). Checkpoints deleted since (by retention or by hand) do not
    matter: the record holds every epoch's results, so nothing is trained
    again."""
    record = RunRecord.load(summary["run_dir"]) if summary.get("run_dir") else None
    return (record is not None and record.finished and record.rows == summary.get("rows")
            and not record.damaged_checkpoints(summary["run_dir"]))
