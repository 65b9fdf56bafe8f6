"""The run record: RUN_DIR/record.json, the run folder's own account of every
epoch, whichever checkpoints are still on disk.

    record = RunRecord.load(run_dir)              # None: no record, or unreadable
    record.add_epoch(row, test_result)            # after an epoch's checkpoint is evaluated
    record.save(run_dir)                          # atomic: old or new, never half

What it holds (a few KB for 30 epochs):
- which run (config fingerprint, data key), the planned epochs, whether
  training finished, and what the best epoch is chosen on (the validation
  split, or the test set for a run without one);
- one row per epoch: its training stats, validation and test loss and
  accuracy, and its checkpoint's SHA-256 as written;
- the full test result (per class, confusion) of the selected and the last
  epoch, what the report shows of them;
- `kept`: the checkpoints retention left on disk, by epoch.

Why a file of its own: checkpoints can be pruned (train.keep_checkpoints)
or deleted by hand, and resume.pt is gone once a run has finished; the
record is what says an epoch was trained and how good it was, and the one
place that answers "is this checkpoint file the one its epoch wrote". It is
written after each epoch's evaluation and before any file is pruned, so a
kill at any moment leaves a record that is true of what is on disk or of a
state that a re-run completes.

The rule for the best epoch lives here too (`select_epoch`): the report,
sweeps, predict and retention all use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet_pipeline.files import atomic_write_text
from alexnet_pipeline.integrity import intact

RECORD_NAME = "record.json"
FORMAT = "alexnet-pipeline-record/1"
# The training statistics of a row (alexnet_pipeline.train.EpochStats's fields
# less the checkpoint's path, which is derived from the epoch).
TRAIN_FIELDS = ("epoch", "train_loss", "train_acc", "lr", "epoch_seconds", "images_per_s")
SCORE_FIELDS = ("val_loss", "val_acc", "test_loss", "test_acc")


def checkpoint_name(epoch: int) -> str:
    """The checkpoint of `epoch`, relative to the run folder: a moved run
    folder keeps meaning the same files."""
    return f"checkpoints/alexnet-{epoch:02d}.pt"


def select_epoch(rows: list[dict]) -> int:
    """The best epoch: highest validation accuracy when the rows have one,
    else highest test accuracy; the earliest epoch wins a tie."""
    key = "val_acc" if uses_validation(rows) else "test_acc"
    best = max(_number(r.get(key)) for r in rows)
    return min(int(r["epoch"]) for r in rows if _number(r.get(key)) == best)


def uses_validation(rows: list[dict]) -> bool:
    return any(not math.isnan(_number(r.get("val_acc"))) for r in rows)


def _number(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


@dataclass
class RunRecord:
    config_fingerprint: str
    dataset_key: str
    epochs: int
    rows: list[dict] = field(default_factory=list)
    results: dict[int, dict] = field(default_factory=dict)  # epoch -> full test result
    kept: dict[int, str] = field(default_factory=dict)  # epoch -> SHA-256 of its checkpoint on disk
    finished: bool = False

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord | None:
        """The record in `run_dir`, or None when there is none or it cannot be
        read (a damaged record is as good as none: the run re-derives what it
        needs from resume.pt and the checkpoints)."""
        path = Path(run_dir) / RECORD_NAME
        try:
            if not path.is_file():
                return None
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                return None
            return cls(config_fingerprint=data["config_fingerprint"], dataset_key=data["dataset_key"],
                       epochs=int(data["epochs"]), rows=list(data["rows"]),
                       results={int(k): v for k, v in data["results"].items()},
                       kept={int(k): str(v) for k, v in data["kept"].items()}, finished=bool(data["finished"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def is_of(self, fingerprint: str, dataset_key: str) -> bool:
        return self.config_fingerprint == fingerprint and self.dataset_key == dataset_key

    def save(self, run_dir: str | Path) -> None:
        data = {"format": FORMAT, "config_fingerprint": self.config_fingerprint, "dataset_key": self.dataset_key,
                "epochs": self.epochs, "finished": self.finished,
                "selected_on": self.selected_on, "selected_epoch": self.selected_epoch,
                "rows": self.rows, "results": {str(k): v for k, v in sorted(self.results.items())},
                "kept": {str(k): v for k, v in sorted(self.kept.items())}}
        atomic_write_text(Path(run_dir) / RECORD_NAME, json.dumps(data, indent=1, allow_nan=True) + "\n")

    @property
    def evaluated(self) -> set[int]:
        return {int(r["epoch"]) for r in self.rows}

    @property
    def selected_epoch(self) -> int | None:
        return select_epoch(self.rows) if self.rows else None

    @property
    def selected_on(self) -> str:
        return "validation" if uses_validation(self.rows) else "test"

    def add_epoch(self, row: dict, test_result: dict) -> None:
        """Record an evaluated epoch (replacing an earlier row of the same
        epoch) and keep the full test results of the selected and the last
        epoch only."""
        epoch = int(row["epoch"])
        self.rows = sorted([r for r in self.rows if int(r["epoch"]) != epoch] + [row], key=lambda r: int(r["epoch"]))
        self.results[epoch] = test_result
        wanted = {self.selected_epoch, max(self.evaluated)}
        self.results = {e: r for e, r in self.results.items() if e in wanted}

    def damaged_checkpoints(self, run_dir: str | Path) -> list[Path]:
        """Kept checkpoints that are on disk but not as their epoch wrote them.
        (One that is gone was deleted: the record still holds its epoch.)"""
        paths = {e: Path(run_dir) / checkpoint_name(e) for e in self.kept}
        return [paths[e] for e, sha in sorted(self.kept.items()) if paths[e].exists() and not intact(paths[e], sha)]

    def keep_only(self, epochs: set[int]) -> None:
        self.kept = {e: sha for e, sha in self.kept.items() if e in epochs}

    def summary(self) -> dict:
        """What the fine-tune task returns and the report is written from."""
        selected = self.selected_epoch
        return {"rows": self.rows, "selected_epoch": selected, "selected_on": self.selected_on,
                "selected_result": self.results.get(selected), "epochs": self.epochs, "finished": self.finished}


def row_of(stats: dict, scores: dict[str, dict]) -> dict:
    """A record row from an epoch's training stats (EpochStats as a dict, with
    its checkpoint's SHA-256) and its evaluation ({"val": ..., "test": ...},
    EvalResults as dicts; "val" absent for a run without a split)."""
    val, test = scores.get("val"), scores["test"]
    return {**{k: stats[k] for k in TRAIN_FIELDS},
            "val_loss": val["loss"] if val else None, "val_acc": val["accuracy"] if val else None,
            "val_images": val["num_images"] if val else 0,
            "test_loss": test["loss"], "test_acc": test["accuracy"], "test_images": test["num_images"],
            "checkpoint": checkpoint_name(int(stats["epoch"])), "checkpoint_sha256": stats.get("checkpoint_sha256", "")}
