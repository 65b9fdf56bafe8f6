"""Each committed checkpoint evaluated while training goes on, recorded in the
run record, and the checkpoints retention does not keep deleted.

    book = EpochBook(cfg, dataset_dir, run_dir, record)
    book.catch_up(committed)        # epoch -> SHA-256 of every committed checkpoint
    book.finish()                   # the record says finished; resume.pt goes

Order, for crash safety: an epoch is evaluated only once its checkpoint is
committed; the record naming what stays is saved before any file is
deleted; a file is deleted only once its epoch is in the saved record. A
run killed anywhere in between finds, on its next start, committed epochs
not yet evaluated (evaluated then) or files no longer kept (deleted then).
Peak disk while training is therefore the kept checkpoints, the one being
evaluated, the resume state and whatever the writer has in flight, not a
checkpoint per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from alexnet_pipeline import checkpoint as ckpt_io
from alexnet_pipeline import faults
from alexnet_pipeline.config import PipelineConfig
from alexnet_pipeline.evaluate import evaluate_splits
from alexnet_pipeline.integrity import remove_with_record
from alexnet_pipeline.record import RunRecord, row_of

log = logging.getLogger(__name__)


class EpochBook:
    def __init__(self, cfg: PipelineConfig, dataset_dir: Path, run_dir: Path, record: RunRecord):
        self.cfg, self.dataset_dir, self.run_dir, self.record = cfg, Path(dataset_dir), Path(run_dir), record
        self.checkpoint_dir = self.run_dir / "checkpoints"

    def catch_up(self, committed: dict[int, str], history: list[dict]) -> None:
        """Evaluate, record and prune every committed epoch not yet in the
        record, oldest first. `history`: the epochs' training stats (dicts)."""
        stats = {int(h["epoch"]): h for h in history}
        for epoch in sorted(set(committed) - self.record.evaluated):
            path = ckpt_io.checkpoint_path(self.checkpoint_dir, epoch)
            t = self.cfg.train
            scores = evaluate_splits(path, self.dataset_dir, device=t.device, subset=self.cfg.data.subset,
                                     batch_size=t.eval_batch_size)
            scores = {split: dataclasses.asdict(result) for split, result in scores.items()}
            self.record.add_epoch(row_of({**stats[epoch], "checkpoint_sha256": committed[epoch]}, scores),
                                  scores["test"])
            self.record.kept[epoch] = committed[epoch]
            self.record.keep_only(self.wanted())
            self.record.save(self.run_dir)
            val = scores.get("val")
            log.info("epoch %d: %stest accuracy %.2f%%", epoch,
                     f"validation accuracy {val['accuracy'] * 100:.2f}%, " if val else "",
                     scores["test"]["accuracy"] * 100)
            faults.crash_point("prune", epoch)
            self.prune()

    def wanted(self) -> set[int]:
        """The evaluated epochs whose checkpoints stay: all, or the selected
        and the last one."""
        evaluated = self.record.evaluated
        if self.cfg.train.keep_checkpoints == "all" or not evaluated:
            return evaluated
        return {self.record.selected_epoch, max(evaluated)}

    def prune(self) -> None:
        """Delete the checkpoints of evaluated epochs that the saved record no
        longer keeps. Files of epochs not evaluated yet are left alone: they
        may be committed and waiting for their evaluation."""
        for path in ckpt_io.list_checkpoints(self.checkpoint_dir):
            epoch = ckpt_io.checkpoint_epoch(path)
            if epoch in self.record.evaluated and epoch not in self.record.kept:
                remove_with_record(path)

    def finish(self) -> None:
        """Every epoch trained and evaluated: say so in the record, then drop
        the resume state (456 MB for AlexNet), which nothing needs any more."""
        if not self.record.finished:
            self.record.finished = True
            self.record.save(self.run_dir)
            faults.crash_point("finish")
        for name in (ckpt_io.RESUME_NAME, ckpt_io.PENDING_RESUME_NAME):
            (self.checkpoint_dir / name).unlink(missing_ok=True)


def remove_stale_checkpoints(checkpoint_dir: Path) -> None:
    """Training starts again at epoch 1: checkpoints on disk are of an earlier
    training and must never be evaluated beside the new ones."""
    stale = ckpt_io.list_checkpoints(checkpoint_dir)
    if stale:
        log.warning("Removing %s of an earlier training of this run (training starts again at epoch 1)",
                    ", ".join(p.name for p in stale))
    for path in stale:
        remove_with_record(path)
