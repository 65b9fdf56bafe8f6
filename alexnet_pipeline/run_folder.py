"""Finding a run folder and its checkpoints after the fact.

    from alexnet_pipeline.run_folder import latest_run_dir, run_checkpoints
    run_dir = latest_run_dir(runs_root())      # the run trained most recently
    checkpoints = run_checkpoints(run_dir)     # alexnet-01.pt, alexnet-02.pt, ...
"""

from __future__ import annotations

import logging
from pathlib import Path

from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.integrity import intact
from alexnet_pipeline.record import RunRecord

log = logging.getLogger(__name__)


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The epoch checkpoints of a run folder that may be evaluated, by epoch.

    With a run record (record.json) it alone says which file is which
    epoch's: a checkpoint whose bytes differ from the hash its epoch
    recorded (damaged, or left by an earlier training of the folder) is
    left out with a warning, and so is one of an epoch the record does not
    know once training has finished. Without one (a run folder from before
    records, or a record deleted), resume.pt's hashes are asked instead.
    An epoch whose checkpoint training kept but that is gone now is named
    in a warning; one pruned by retention (train.keep_checkpoints) is not
    missing. An error if no checkpoint is left."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give the folder of a run "
                              "(runs/<name>, or the --out it was trained with)")
    # Imported here: alexnet_pipeline.checkpoint imports torch (seconds), which
    # a command's refusal of a missing folder does not wait for.
    from alexnet_pipeline.checkpoint import checkpoint_epoch, list_checkpoints, load_resume_state

    checkpoint_dir = run_dir / "checkpoints"
    found = list_checkpoints(checkpoint_dir)
    record = RunRecord.load(run_dir)
    if not found:
        if record is not None and record.rows:
            raise CheckpointError(f"{run_dir} holds no checkpoint any more (expected {checkpoint_dir}/alexnet-NN.pt); "
                                  f"its run record still holds every epoch's results and report.md stands. "
                                  "Train again into a new --out for a model to use")
        raise CheckpointError(f"{run_dir} holds no checkpoints (expected {checkpoint_dir}/alexnet-NN.pt); "
                              "give the folder of a run that trained at least one epoch")
    # resume.pt (while a run trains) knows the epochs committed since the
    # record's last evaluation; the record, where it has the epoch, wins.
    recorded = dict((load_resume_state(checkpoint_dir) or {}).get("checkpoints", {}))
    if record is not None:
        recorded.update({int(r["epoch"]): r["checkpoint_sha256"] for r in record.rows})
        expected_there = set(record.kept)
    else:
        expected_there = set(range(1, max(map(checkpoint_epoch, found), default=0) + 1)) | set(recorded)
    damaged = [p for p in found
               if (expected := recorded.get(checkpoint_epoch(p))) and not intact(p, expected)]
    unknown = [p for p in found if record is not None and checkpoint_epoch(p) not in recorded]
    if damaged or unknown:
        log.warning("Leaving out %s: the content differs from what training wrote for that epoch (damaged, "
                    "replaced, or left by an earlier training); run the training command again to redo those "
                    "epochs", ", ".join(p.name for p in damaged + unknown))
    present = {checkpoint_epoch(p) for p in found}
    missing = sorted(expected_there - present)
    if missing:
        log.warning("No checkpoint for epoch%s %s in %s (deleted?): %s", "s" if len(missing) > 1 else "",
                    ", ".join(map(str, missing)), checkpoint_dir,
                    "the report keeps the numbers the run record holds" if record is not None
                    else "the report leaves them out")
    kept = [p for p in found if p not in damaged and p not in unknown]
    if not kept:
        raise CheckpointError(f"every checkpoint in {checkpoint_dir} differs from what training wrote; "
                              "run the training command again to redo them")
    return kept


def latest_run_dir(root: str | Path) -> Path:
    """The folder under `root` (searched two levels deep, so sweep trials count)
    whose newest checkpoint was written last."""
    from alexnet_pipeline.checkpoint import list_checkpoints  # torch: see run_checkpoints

    root = Path(root)
    newest: tuple[float, Path] | None = None
    for checkpoint_dir in [*root.glob("*/checkpoints"), *root.glob("*/*/checkpoints")]:
        checkpoints = list_checkpoints(checkpoint_dir)
        if checkpoints:
            written = max(p.stat().st_mtime for p in checkpoints)
            if newest is None or written > newest[0]:
                newest = (written, checkpoint_dir.parent)
    if newest is None:
        raise CheckpointError(f"no run folder with checkpoints under {root.resolve()}; "
                              "pass run_dir, or set ALEXNET_PIPELINE_RUNS_ROOT to where the runs are")
    return newest[1]
