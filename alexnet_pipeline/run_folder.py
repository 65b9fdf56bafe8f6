"""Finding a run folder and its checkpoints after the fact.

    from alexnet_pipeline.run_folder import latest_run_dir, run_checkpoints
    run_dir = latest_run_dir(runs_root())      # the run trained most recently
    checkpoints = run_checkpoints(run_dir)     # alexnet-01.pt, alexnet-02.pt, ...
"""

from __future__ import annotations

from pathlib import Path

from alexnet_pipeline.checkpoint import list_checkpoints
from alexnet_pipeline.errors import CheckpointError


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The epoch checkpoints of a run folder, by epoch; an error if there are none."""
    checkpoint_dir = Path(run_dir) / "checkpoints"
    found = list_checkpoints(checkpoint_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoints (expected {checkpoint_dir}/alexnet-NN.pt); "
                              "give the folder of a run that trained at least one epoch")
    return found


def latest_run_dir(root: str | Path) -> Path:
    """The folder under `root` (searched two levels deep, so sweep trials count)
    whose newest checkpoint was written last."""
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
