"""Which checkpoint of a run folder is "the model": the one rule that predict,
export and the README's loading snippet share.

    from alexnet_pipeline.selection import selected_checkpoint
    path = selected_checkpoint("runs/cifar10-none-e2-0123456789")   # .../checkpoints/alexnet-07.pt

The selected epoch is the report's (record.select_epoch: the highest
validation accuracy, or test accuracy for a run without a validation split;
the earliest epoch on a tie), as the run record holds it.
A run without a report yet (stopped before it) falls back to its newest
checkpoint, and says so.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from alexnet_pipeline.checkpoint import checkpoint_epoch, checkpoint_path, load_checkpoint
from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.record import RunRecord, select_epoch
from alexnet_pipeline.run_folder import run_checkpoints

log = logging.getLogger(__name__)

REPORT_TABLE = "accuracy.csv"


def _report_best_epoch(run_dir: Path) -> int | None:
    """The run's selected epoch (record.select_epoch: on validation when the
    run has a split): from its run record, else from the accuracy.csv of a
    run folder from before records; None when neither can be read."""
    record = RunRecord.load(run_dir)
    if record is not None and record.rows:
        return record.selected_epoch
    try:
        with open(run_dir / REPORT_TABLE, newline="") as f:
            rows = list(csv.DictReader(f))
        return select_epoch(rows) if rows else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def selected_checkpoint(run_dir: str | Path, epoch: int | None = None) -> Path:
    """The checkpoint of `run_dir` to use: epoch `epoch` when given, else the
    report's best epoch, else (no report) the newest checkpoint. A checkpoint
    whose bytes differ from what training wrote is never selected."""
    run_dir = Path(run_dir)
    checkpoints = run_checkpoints(run_dir)  # refuses a folder that is not a run's
    by_epoch = {checkpoint_epoch(p): p for p in checkpoints}
    if epoch is not None:
        if epoch not in by_epoch:
            raise CheckpointError(
                f"{run_dir} has no intact checkpoint for epoch {epoch} ({checkpoint_path(run_dir / 'checkpoints', epoch)}); "
                f"it has epochs {', '.join(str(e) for e in sorted(by_epoch))}"
            )
        return by_epoch[epoch]
    best = _report_best_epoch(run_dir)
    if best is not None and best in by_epoch:
        return by_epoch[best]
    log.warning("%s has no report naming a best epoch that is on disk; using its newest checkpoint, %s",
                run_dir, checkpoints[-1].name)
    return checkpoints[-1]


def resolve_model(model: str | Path, epoch: int | None = None) -> Path:
    """A run folder (its selected checkpoint, or `epoch`'s) or a checkpoint
    file as given on a command line: the checkpoint file to load."""
    path = Path(model).expanduser()
    if path.is_file():
        if epoch is not None:
            raise CheckpointError(f"{path} is a checkpoint file; --epoch picks a checkpoint of a run folder, "
                                  "give the run folder instead")
        load_checkpoint(path)  # refuses a file that is not one of this pipeline's checkpoints
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run folder (runs/<name>) or a checkpoint "
                              "(runs/<name>/checkpoints/alexnet-NN.pt)")
    return selected_checkpoint(path, epoch)
