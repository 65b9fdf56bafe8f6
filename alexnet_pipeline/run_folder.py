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

log = logging.getLogger(__name__)


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The epoch checkpoints of a run folder, by epoch, leaving out (with a
    warning) any whose bytes differ from the hash training recorded for it;
    an error if none is left."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; give the folder of a run "
                              "(runs/<name>, or the --out it was trained with)")
    # Imported here: alexnet_pipeline.checkpoint imports torch (seconds), which
    # a command's refusal of a missing folder does not wait for.
    from alexnet_pipeline.checkpoint import checkpoint_epoch, list_checkpoints, load_resume_state

    checkpoint_dir = run_dir / "checkpoints"
    found = list_checkpoints(checkpoint_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoints (expected {checkpoint_dir}/alexnet-NN.pt); "
                              "give the folder of a run that trained at least one epoch")
    state = load_resume_state(checkpoint_dir) or {}
    recorded = state.get("checkpoints", {})
    damaged = [p for p in found
               if (expected := recorded.get(checkpoint_epoch(p))) and not intact(p, expected)]
    if damaged:
        log.warning("Leaving out %s: the content differs from what training wrote (damaged or replaced); "
                    "run the training command again to redo those epochs", ", ".join(p.name for p in damaged))
    # Training writes one checkpoint per epoch: an epoch below the newest one,
    # or one resume.pt names, without its file was deleted or moved, and the
    # report would otherwise lose its row without a word.
    present = {checkpoint_epoch(p) for p in found}
    missing = sorted((set(range(1, max(present) + 1)) | set(recorded)) - present)
    if missing:
        log.warning("No checkpoint for epoch%s %s in %s (deleted?): the report leaves %s out",
                    "s" if len(missing) > 1 else "", ", ".join(map(str, missing)), checkpoint_dir,
                    "them" if len(missing) > 1 else "it")
    kept = [p for p in found if p not in damaged]
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
