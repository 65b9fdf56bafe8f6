from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from alexnet_pipeline.versions import EVALUATE_VERSION
from tasks.caching import by_file_content


def evaluate_checkpoint(*args, **kwargs):
    """alexnet_pipeline.evaluate.evaluate_checkpoint, imported when a checkpoint
    is evaluated: it imports torch (seconds), which a cache hit does not need.
    A function of that name, so that the task's source (part of its cache key)
    is unchanged."""
    from alexnet_pipeline.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(*args, **kwargs)


def _run_name() -> str:
    """evaluate-alexnet-07 rather than the checkpoint's whole path."""
    from prefect.runtime import task_run

    return f"evaluate-{Path(task_run.parameters['checkpoint']).stem}"


# Keyed by the checkpoint's bytes: a rewritten checkpoint is evaluated again,
# an unchanged one never is, wherever it lives.
@task(name="evaluate-checkpoint", cache_policy=by_file_content("checkpoint", "evaluate", EVALUATE_VERSION), persist_result=True,
      task_run_name=_run_name)
def evaluate_checkpoint_task(checkpoint: str, dataset_dir: str, device: str, subset: int | None,
                             batch_size: int) -> dict:
    result = evaluate_checkpoint(checkpoint, dataset_dir, device=device, subset=subset, batch_size=batch_size)
    get_run_logger().info("%s: test accuracy %.2f%%, loss %.4f", checkpoint, result.accuracy * 100, result.loss)
    return dataclasses.asdict(result)
