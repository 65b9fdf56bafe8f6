"""Failures in the middle of a run (issue 4): a full disk while writing a
checkpoint or the cache, a loss that becomes NaN, CUDA out of memory. Each
gives a message that says what to do, and what was written before survives.

    pytest tests/test_runtime_failures.py

The disk-full tests run twice: with a patched writer (always), and on a real
tiny tmpfs when this user may mount one (root; skipped otherwise; the
`tiny_filesystem` fixture is in conftest.py).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipeline import cache as cache_module
from alexnet_pipeline import train as train_module
from alexnet_pipeline.cache import is_complete, load_arrays, preprocess
from alexnet_pipeline.checkpoint import RESUME_NAME, save_epoch_checkpoint
from alexnet_pipeline.config import DataConfig, resolve_config
from alexnet_pipeline.errors import (
    CheckpointError,
    DataError,
    DeviceMemoryError,
    TrainingDivergedError,
)
from alexnet_pipeline.evaluate import evaluate_checkpoint
from alexnet_pipeline.model import new_alexnet
from alexnet_pipeline.train import train_run
from tests.fixtures import make_image_folder, sha256_of

# The image_folder fixture: 3 classes, 6 train images each -> 2 steps of 9.
BATCH = 9


def config_for(image_folder: Path, epochs: int = 2):
    return resolve_config(overrides={
        "data.dataset": "imagefolder", "data.data_dir": str(image_folder), "model.weights": "none",
        "train.epochs": epochs, "train.batch_size": BATCH, "train.image_size": 64, "train.device": "cpu",
        "train.lr": 1e-3,
    })


@pytest.fixture
def dataset_dir(image_folder) -> Path:
    return preprocess(DataConfig(dataset="imagefolder", data_dir=str(image_folder)), image_size=64, progress=False)


def recorded_hashes(checkpoint_dir: Path) -> dict[int, str]:
    return torch.load(checkpoint_dir / RESUME_NAME, weights_only=True)["checkpoints"]


def assert_epoch_1_intact(checkpoint_dir: Path) -> None:
    """alexnet-01.pt and resume.pt as epoch 1 left them; nothing half-written."""
    state = torch.load(checkpoint_dir / RESUME_NAME, weights_only=True)
    assert state["epoch"] == 1
    assert sha256_of(checkpoint_dir / "alexnet-01.pt") == state["checkpoints"][1]
    assert not (checkpoint_dir / "alexnet-02.pt").exists()
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [".alexnet-01.pt.sha256", "alexnet-01.pt", RESUME_NAME]


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- disk full: checkpoints ------------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_keeps_the_earlier_ones(monkeypatch, image_folder, dataset_dir,
                                                                       tmp_path):
    real_save = torch.save

    def save_that_runs_out_of_space(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "format" in obj and obj["epoch"] == 2:
            f.write(b"\0" * 4096)
            # What torch.save does when f.write fails: its zip writer raises a
            # RuntimeError, with the OSError as context.
            try:
                raise enospc()
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4096")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_that_runs_out_of_space)
    cfg, run_dir = config_for(image_folder), tmp_path / "run"

    with pytest.raises(CheckpointError) as failed:
        train_run(cfg, dataset_dir, run_dir, progress=False)

    message = str(failed.value)
    assert "alexnet-02.pt" in message and "No space left on device" in message
    assert "earlier checkpoints are intact" in message and "run the same command again" in message
    checkpoint_dir = run_dir / "checkpoints"
    assert_epoch_1_intact(checkpoint_dir)
    first = (checkpoint_dir / "alexnet-01.pt").stat()

    # Space freed: the same call resumes after epoch 1 and finishes.
    monkeypatch.undo()
    history = train_run(cfg, dataset_dir, run_dir, progress=False)
    assert [h.epoch for h in history] == [1, 2]
    assert (checkpoint_dir / "alexnet-01.pt").stat().st_mtime_ns == first.st_mtime_ns


def test_disk_full_on_a_real_filesystem_keeps_the_earlier_checkpoints(image_folder, dataset_dir, tiny_filesystem):
    model_bytes = sum(t.numel() * t.element_size() for t in new_alexnet(3).state_dict().values())
    # Epoch 1 needs ~3 model sizes (alexnet-01.pt + resume.pt with AdamW's two
    # moments); epoch 2's alexnet-02.pt does not fit in the half left over.
    run_dir = tiny_filesystem(int(3.5 * model_bytes)) / "run"

    with pytest.raises(CheckpointError) as failed:
        train_run(config_for(image_folder), dataset_dir, run_dir, progress=False)

    assert "alexnet-02.pt" in str(failed.value) and "No space left on device" in str(failed.value)
    assert_epoch_1_intact(run_dir / "checkpoints")


# --- disk full: the preprocess cache ----------------------------------------------------


def test_disk_full_while_writing_the_cache_keeps_other_entries(monkeypatch, tmp_path):
    cache_dir = tmp_path / "cache"
    first_folder = make_image_folder(tmp_path / "first", classes=("a", "b"))
    second_folder = make_image_folder(tmp_path / "second", classes=("c", "d"), seed=1)
    first = preprocess(DataConfig(dataset="imagefolder", data_dir=str(first_folder), cache_dir=str(cache_dir)),
                       image_size=64, progress=False)
    before = {p: p.read_bytes() for p in first.iterdir()}
    real_save = np.save
    calls = []

    def save_that_runs_out_of_space(file, arr, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise enospc()
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", save_that_runs_out_of_space)
    with pytest.raises(DataError) as failed:
        preprocess(DataConfig(dataset="imagefolder", data_dir=str(second_folder), cache_dir=str(cache_dir)),
                   image_size=64, progress=False)

    message = str(failed.value)
    assert "No space left on device" in message and str(cache_dir) in message and "--cache-dir" in message
    assert len(calls) == 2
    assert sorted(cache_dir.iterdir()) == [first]  # no half-written entry, no temporary folder
    assert {p: p.read_bytes() for p in first.iterdir()} == before
    assert load_arrays(first).class_names == ["a", "b"]


def test_disk_full_on_a_real_filesystem_keeps_the_cache(tmp_path, tiny_filesystem):
    cache_dir = tiny_filesystem(256 * 1024)
    small = preprocess(DataConfig(dataset="imagefolder", data_dir=str(make_image_folder(tmp_path / "small")),
                                  cache_dir=str(cache_dir), stored_size=8), image_size=64, progress=False)
    big_folder = make_image_folder(tmp_path / "big", size=64, seed=1)
    with pytest.raises(DataError) as failed:
        # 27 images of 64x64x3 bytes: more than the 256 KiB filesystem holds.
        preprocess(DataConfig(dataset="imagefolder", data_dir=str(big_folder), cache_dir=str(cache_dir),
                              stored_size=64), image_size=64, progress=False)

    # numpy reports the full disk as a short write, without an errno.
    assert "MB left on that disk" in str(failed.value) and "free some disk space" in str(failed.value)
    assert sorted(cache_dir.iterdir()) == [small]
    assert is_complete(small) and load_arrays(small).train_images.shape[1:] == (8, 8, 3)


# --- a loss that diverges ----------------------------------------------------------------


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(monkeypatch, image_folder,
                                                                                 dataset_dir, tmp_path):
    steps_per_epoch = 2

    class LossThatTurnsNaN(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, labels):
            LossThatTurnsNaN.calls += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if LossThatTurnsNaN.calls > steps_per_epoch else loss

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", LossThatTurnsNaN)
    run_dir = tmp_path / "run"

    with pytest.raises(TrainingDivergedError) as failed:
        train_run(config_for(image_folder), dataset_dir, run_dir, progress=False)

    message = str(failed.value)
    assert "nan" in message and "in epoch 2" in message and f"step 2 of {steps_per_epoch}" in message
    assert "--lr" in message and "kept" in message
    assert_epoch_1_intact(run_dir / "checkpoints")


# --- CUDA out of memory ------------------------------------------------------------------------


def cuda_oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total)")


def test_out_of_memory_in_training_suggests_a_smaller_batch_size(monkeypatch, image_folder, dataset_dir, tmp_path):
    def train_epoch(self, epoch, progress=True, max_steps=None):
        raise cuda_oom()

    monkeypatch.setattr(train_module.Trainer, "train_epoch", train_epoch)
    with pytest.raises(DeviceMemoryError) as failed:
        train_run(config_for(image_folder), dataset_dir, tmp_path / "run", progress=False)

    message = str(failed.value)
    assert "ran out of memory in epoch 1" in message
    assert f"--batch-size {BATCH // 2}" in message and "smaller --batch-size" in message


def test_out_of_memory_in_evaluation_suggests_a_smaller_eval_batch(monkeypatch, dataset_dir, tmp_path):
    checkpoint = tmp_path / "alexnet-01.pt"
    meta = load_arrays(dataset_dir)
    save_epoch_checkpoint(checkpoint, new_alexnet(len(meta.class_names)).state_dict(), {
        "class_names": meta.class_names, "num_classes": len(meta.class_names), "image_size": 64,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "epoch": 1,
    })

    def evaluate_batches(*args, **kwargs):
        raise cuda_oom()

    monkeypatch.setattr("alexnet_pipeline.evaluate.evaluate_batches", evaluate_batches)
    with pytest.raises(DeviceMemoryError) as failed:
        evaluate_checkpoint(checkpoint, dataset_dir, device="cpu", batch_size=1000)
    assert "eval_batch_size" in str(failed.value) and "250" in str(failed.value)
