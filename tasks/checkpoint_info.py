from __future__ import annotations

from prefect import task

from alexnet_pipeline.checkpoint import FORMAT, load_checkpoint
from tasks.caching import by_file_content


# Keyed by the checkpoint's bytes, like its evaluation: a checkpoint is read
# for its metadata once, wherever the run folder has moved since.
@task(name="describe-checkpoint", cache_policy=by_file_content("checkpoint", "describe-checkpoint", FORMAT),
      persist_result=True, task_run_name="describe-{checkpoint}")
def describe_checkpoint(checkpoint: str) -> dict:
    """What a checkpoint says about itself: epoch, config, class names, the
    key of the data it was trained on and that epoch's training stats
    (without the weights)."""
    ckpt = load_checkpoint(checkpoint)
    return {"epoch": ckpt["epoch"], "config": ckpt["config"], "class_names": ckpt["class_names"],
            "train_stats": ckpt["train_stats"], "dataset_key": ckpt.get("dataset_key"),
            "config_fingerprint": ckpt.get("config_fingerprint")}
