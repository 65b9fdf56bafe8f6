from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from alexnet_pipeline.versions import EVALUATE_VERSION
from tasks.caching import by_file_content


def evaluate_splits(*args, **kwargs):
    """alexnet_pipeline.evaluate.evaluate_splits, imported when a checkpoint
    is evaluated: it imports torch (seconds), which a cache hit does not need.
    A function of that name, so that the task's source (part of its cache key)
    does not depend on where it is imported."""
    from alexnet_pipeline.evaluate import evaluate_splits

    return evaluate_splits(*args, **kwargs)


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
    """{"val": ..., "test": ...} (EvalResults as dicts; "val" absent for a
    run without a validation split)."""
    results = evaluate_splits(checkpoint, dataset_dir, device=device, subset=subset, batch_size=batch_size)
    val = results.get("val")
    get_run_logger().info("%s: %stest accuracy %.2f%%, loss %.4f", checkpoint,
                          f"validation accuracy {val.accuracy * 100:.2f}%, " if val else "",
                          results["test"].accuracy * 100, results["test"].loss)
    return {split: dataclasses.asdict(result) for split, result in results.items()}
