"""After training (issue 18): the validation split, checkpoints evaluated as
they are committed and pruned by retention, and the run record that keeps
every epoch whatever is deleted. Real training on tiny CPU data (10 images,
64x64), real files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from alexnet_pipeline.cache import load_arrays
from alexnet_pipeline.checkpoint import RESUME_NAME, list_checkpoints
from alexnet_pipeline.data import validation_split
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.record import RECORD_NAME, RunRecord, select_epoch
from alexnet_pipeline.run_folder import run_checkpoints
from alexnet_pipeline.train import train_run
from tests.test_train import dataset_dir, make_config  # noqa: F401 - dataset_dir is a fixture

EPOCHS = 4


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir / "checkpoints")]


@pytest.fixture(scope="module")
def pruned_run(dataset_dir, tmp_path_factory):  # noqa: F811
    """A 4-epoch run with the default retention; the checkpoint files seen
    after each epoch's evaluation (sampled at the next epoch's end)."""
    run_dir = tmp_path_factory.mktemp("pruned")
    cfg = make_config(dataset_dir, **{"train.epochs": EPOCHS})
    seen = []
    history = train_run(cfg, dataset_dir, run_dir, progress=False,
                        on_epoch_end=lambda stats: seen.append(names(run_dir)))
    return cfg, run_dir, history, seen


def test_the_split_is_the_same_for_every_seed_and_held_out_of_training(dataset_dir):  # noqa: F811
    labels = load_arrays(dataset_dir).train_labels
    train, val = validation_split(labels, 0.1, 10)
    assert np.bincount(labels[val], minlength=10).tolist() == [1] * 10  # 10% of 5 per class, at least one
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    # Nothing about a run (seed, subset, trial) enters the split: two calls, one split.
    assert np.array_equal(validation_split(labels, 0.1, 10)[1], val)
    # The 50 training images less the 10 held out: a batch of 41 is refused with the right count.
    cfg = make_config(dataset_dir, **{"data.subset": None, "train.batch_size": 41})
    with pytest.raises(ConfigError, match=r"larger than the 40 training images"):
        train_run(cfg, dataset_dir, dataset_dir.parent / "never", progress=False)


def test_every_epoch_is_scored_on_validation_and_test_and_selected_on_validation(pruned_run):
    cfg, run_dir, history, _ = pruned_run
    record = RunRecord.load(run_dir)
    assert record.finished and [r["epoch"] for r in record.rows] == list(range(1, EPOCHS + 1))
    for row in record.rows:
        assert row["val_images"] == 10 and row["test_images"] == 10
        assert 0 <= row["val_acc"] <= 1 and 0 <= row["test_acc"] <= 1
    assert record.selected_on == "validation"
    assert record.selected_epoch == select_epoch(record.rows)
    assert json.loads((run_dir / RECORD_NAME).read_text())["selected_epoch"] == record.selected_epoch


def test_selection_uses_validation_not_test():
    rows = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.9}, {"epoch": 2, "val_acc": 0.7, "test_acc": 0.6},
            {"epoch": 3, "val_acc": 0.7, "test_acc": 0.8}]
    assert select_epoch(rows) == 2  # highest validation accuracy, earliest on a tie
    assert select_epoch([{**r, "val_acc": None} for r in rows]) == 1  # no split: on test


def test_retention_keeps_the_selected_and_the_last_while_training(pruned_run):
    """Peak disk is bounded while the run trains, not only at the end: after
    every epoch at most the selected, the previous last and the new one are
    on disk; at the end the selected and the last, and no resume state."""
    _, run_dir, _, seen = pruned_run
    assert all(len(files) <= 3 for files in seen), seen
    record = RunRecord.load(run_dir)
    kept = {record.selected_epoch, EPOCHS}
    assert names(run_dir) == [f"alexnet-{e:02d}.pt" for e in sorted(kept)]
    assert set(record.kept) == kept
    assert not (run_dir / "checkpoints" / RESUME_NAME).exists()


def test_all_checkpoints_stay_when_asked(dataset_dir, tmp_path):  # noqa: F811
    cfg = make_config(dataset_dir, **{"train.epochs": 3, "train.keep_checkpoints": "all"})
    train_run(cfg, dataset_dir, tmp_path / "run", progress=False)
    assert names(tmp_path / "run") == ["alexnet-01.pt", "alexnet-02.pt", "alexnet-03.pt"]
    # Retention does not change results: same fingerprint, same run folder name.
    assert cfg.fingerprint() == make_config(dataset_dir, **{"train.epochs": 3}).fingerprint()


def test_a_finished_run_pruned_by_hand_trains_and_evaluates_nothing(pruned_run, dataset_dir, tmp_path):  # noqa: F811
    """The issue's case: deleting checkpoints of a finished run and running
    it again retrained every epoch. The record holds every epoch now."""
    cfg, ref_dir, history, _ = pruned_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    for path in list_checkpoints(run_dir / "checkpoints")[:-1]:
        path.unlink()
    before = (run_dir / RECORD_NAME).read_bytes()
    trained = []
    again = train_run(cfg, dataset_dir, run_dir, progress=False, on_epoch_end=trained.append)
    assert trained == [] and [h.epoch for h in again] == list(range(1, EPOCHS + 1))
    assert (run_dir / RECORD_NAME).read_bytes() == before


@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.run_folder' attempted to send logs")
@pytest.mark.parametrize("with_resume_state", [False, True], ids=["finished", "resume.pt there"])
def test_a_stale_checkpoint_is_never_evaluated(pruned_run, tmp_path, caplog, with_resume_state):
    """A file under an epoch's checkpoint name that is not the one its epoch
    wrote (left by an earlier training, or replaced): with the record, with
    or without resume.pt, it is left out with a warning."""
    _, ref_dir, _, _ = pruned_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    kept = list_checkpoints(run_dir / "checkpoints")
    pruned_epoch = min(set(range(1, EPOCHS + 1)) - set(RunRecord.load(run_dir).kept))
    stale = run_dir / "checkpoints" / f"alexnet-{pruned_epoch:02d}.pt"
    shutil.copy(kept[0], stale)  # a valid checkpoint, but not this epoch's
    unknown = run_dir / "checkpoints" / f"alexnet-{EPOCHS + 1:02d}.pt"
    shutil.copy(kept[-1], unknown)  # an epoch this run never had
    if with_resume_state:
        shutil.copy(kept[-1], run_dir / "checkpoints" / RESUME_NAME)  # something named resume.pt, not ours
    with caplog.at_level(logging.WARNING):
        assert run_checkpoints(run_dir) == kept
    assert stale.name in caplog.text and unknown.name in caplog.text and "Leaving out" in caplog.text


@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.run_folder' attempted to send logs")
def test_a_kept_checkpoint_deleted_is_named_and_a_pruned_one_is_not(pruned_run, tmp_path, caplog):
    _, ref_dir, _, _ = pruned_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    with caplog.at_level(logging.WARNING):
        run_checkpoints(run_dir)
    assert "No checkpoint" not in caplog.text  # the pruned epochs are not missing
    (run_dir / "checkpoints" / f"alexnet-{EPOCHS:02d}.pt").unlink()
    with caplog.at_level(logging.WARNING):
        run_checkpoints(run_dir)
    assert f"No checkpoint for epoch {EPOCHS} in" in caplog.text and "keeps the numbers the run record holds" in caplog.text


def test_an_image_folder_with_a_val_folder_validates_on_it(tmp_path):
    """DIR/val/<class>/* is the validation split: every image of train/
    trains, and each checkpoint is scored on val/'s images."""
    from alexnet_pipeline.cache import preprocess
    from alexnet_pipeline.config import resolve_config
    from tests.fixtures import make_image_folder

    folder = make_image_folder(tmp_path / "photos", train_per_class=4, test_per_class=2, val_per_class=3)
    cfg = resolve_config("default", overrides={
        "data.dataset": "imagefolder", "data.data_dir": str(folder), "data.cache_dir": str(tmp_path / "cache"),
        "model.weights": "none", "train.epochs": 1, "train.batch_size": 12, "train.image_size": 64,
        "train.device": "cpu"})
    dataset_dir = preprocess(cfg.data, cfg.train.image_size, None, progress=False)
    arrays = load_arrays(dataset_dir)
    assert len(arrays.val_labels) == 9 and len(arrays.train_labels) == 12
    # All 12 training images train (none held out): a batch of 12 fits, of 13 does not.
    with pytest.raises(ConfigError, match=r"larger than the 12 training images"):
        train_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 13})}), dataset_dir,
                  tmp_path / "never", progress=False)
    train_run(cfg, dataset_dir, tmp_path / "run", progress=False)
    (row,) = RunRecord.load(tmp_path / "run").rows
    assert row["val_images"] == 9 and row["test_images"] == 6
