"""Resuming a run from its last complete epoch.

    ckpt_io.finish_interrupted_commit(checkpoint_dir)      # first: a commit cut short by a kill
    state = restore_last_epoch(checkpoint_dir, cfg, dataset_key, model, optimizer, scheduler)
    start_epoch = state["epoch"] + 1

Only checkpoints whose bytes are those recorded when they were written are
resumed from (integrity.intact); otherwise training starts again at epoch 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from alexnet_pipeline import checkpoint as ckpt_io
from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.integrity import intact
from alexnet_pipeline.ownership import RunIdentity, what_differs

log = logging.getLogger(__name__)


def restore_last_epoch(checkpoint_dir: Path, cfg: PipelineConfig, dataset_key: str, model, optimizer, scheduler,
                       evaluated: set[int] = frozenset()) -> dict:
    """Load the last complete epoch's weights, optimizer and schedule into
    `model`, `optimizer` and `scheduler` and return the resume state (epoch,
    history, each checkpoint's SHA-256); a fresh state (epoch 0) if there is
    none, or if the last epoch's checkpoint, or that of an epoch not yet
    `evaluated` (in the run record), is missing or changed since it was
    written. Checkpoints of evaluated epochs may be gone (pruned by
    retention, or by hand): the record holds their results. Raises
    ConfigError if the state belongs to another run."""
    fresh = {"epoch": 0, "history": [], "checkpoints": {}}
    state = ckpt_io.load_resume_state(checkpoint_dir)
    if state is None:
        return fresh
    # claim_run_folder has refused another run already; resume.pt is not
    # used unless it says the same.
    if state.get("config_fingerprint") != cfg.fingerprint() or state.get("dataset_key") != dataset_key:
        there, now = RunIdentity.from_record(state), RunIdentity(cfg.to_dict(), dataset_key, cfg.fingerprint())
        raise ConfigError(
            f"{checkpoint_dir.parent} holds a run with {what_differs(there, now)}, according to "
            f"{checkpoint_dir.name}/{ckpt_io.RESUME_NAME}; pass another --out, or delete that folder to start over"
        )
    epoch = state["epoch"]
    for e in [e for e in range(1, epoch) if e not in evaluated] + [epoch]:
        path = ckpt_io.checkpoint_path(checkpoint_dir, e)
        if not intact(path, state["checkpoints"][e]):
            log.warning("Checkpoint %s is missing or does not match the hash recorded when it was written; "
                        "training restarts from epoch 1", path)
            return fresh
    last = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(checkpoint_dir, epoch))
    model.load_state_dict(last["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """optimizer.load_state_dict, made safe across devices: a run started on
    a GPU may resume on the CPU and back (device "auto"). The saved state
    keeps the GPU's channels_last strides and its `fused` flag; the CPU's
    fused AdamW would pair elements of differently laid out tensors wrongly,
    silently. So moments take their parameter's device and layout, and the
    implementation flags stay what this device chose."""
    chosen = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flags in zip(optimizer.param_groups, chosen):
        group.update(flags)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)
