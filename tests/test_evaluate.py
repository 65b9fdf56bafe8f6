"""Evaluate stage: evaluate() on a model whose predictions we choose (numbers
checked by hand), and evaluate_checkpoint() rebuilding the model from a file."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_pipeline.cache import load_arrays, preprocess, read_meta
from alexnet_pipeline.checkpoint import recent as recent_checkpoints
from alexnet_pipeline.checkpoint import save_epoch_checkpoint
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.download import ensure_cifar10
from alexnet_pipeline.errors import CheckpointError
from alexnet_pipeline.evaluate import evaluate, evaluate_checkpoint
from alexnet_pipeline.model import IMAGENET_MEAN, IMAGENET_STD, new_alexnet
from alexnet_pipeline.transforms import BatchTransform
from tests.fixtures import CLASS_NAMES, sha256_of

CPU = torch.device("cpu")
# Maps uint8 pixels to the same values as floats: the model sees raw pixels.
IDENTITY = BatchTransform(2, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), CPU, channels_last=False)
MARGIN = 10.0


class PixelSaysClass(nn.Module):
    """Predicts the class written in each image's first pixel (red channel)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        predicted = x[:, 0, 0, 0].round().long()
        return F.one_hot(predicted, self.num_classes).float() * MARGIN


def images_predicting(classes: list[int]) -> torch.Tensor:
    images = torch.zeros(len(classes), 2, 2, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.uint8)
    return images


def test_evaluate_numbers_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = [0, 1, 1, 1, 2, 0]
    # batch_size 4 leaves a last batch of 2: both must be counted.
    result = evaluate(PixelSaysClass(3), images_predicting(predictions), labels, IDENTITY, num_classes=3, batch_size=4)
    assert result.num_images == 6
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.per_class_accuracy == pytest.approx([0.5, 1.0, 0.5])
    assert result.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows: true, columns: predicted
    # Cross-entropy of logits (10, 0, 0): log(1 + 2e-10) when right, plus 10 when wrong.
    right = math.log(1 + 2 * math.exp(-MARGIN))
    assert result.loss == pytest.approx((4 * right + 2 * (MARGIN + right)) / 6)


def test_evaluate_class_without_test_images():
    labels = torch.tensor([0, 1, 1])
    result = evaluate(PixelSaysClass(4), images_predicting([0, 1, 3]), labels, IDENTITY, num_classes=4, batch_size=10)
    assert result.per_class_accuracy == [1.0, 0.5, 0.0, 0.0]  # no NaN for the empty classes
    assert result.confusion[3] == [0, 0, 0, 0] and result.confusion[1] == [0, 1, 0, 1]
    assert result.accuracy == pytest.approx(2 / 3)


def test_evaluate_puts_the_model_in_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(12, 2))
    images = torch.randint(0, 255, (8, 2, 2, 3), dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long)
    model.train()
    first = evaluate(model, images, labels, IDENTITY, 2, 8)
    assert not model.training
    assert evaluate(model, images, labels, IDENTITY, 2, 8) == first  # no dropout noise


# --- evaluate_checkpoint: the model from the file alone ---------------------------------------


@pytest.fixture(scope="module")
def dataset_dir(module_tmp, cifar_archive_dir) -> Path:
    data_dir = module_tmp("eval-data")
    shutil.copy(cifar_archive_dir / "cifar-10-python.tar.gz", data_dir)
    batches = ensure_cifar10(data_dir, verify=False, progress=False)
    return preprocess(DataConfig(data_dir=str(data_dir)), 64, batches, progress=False)


@pytest.fixture(scope="module")
def checkpoint(module_tmp, dataset_dir):
    """A checkpoint written as training writes it, from a random model."""
    torch.manual_seed(5)
    model = new_alexnet(10).eval()
    path = module_tmp("ckpt") / "alexnet-01.pt"
    meta = {"class_names": CLASS_NAMES, "num_classes": 10, "image_size": 64, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "config": {}, "seed": 5, "epoch": 1, "dataset_key": read_meta(dataset_dir)["key"]}
    save_epoch_checkpoint(path, model.state_dict(), meta)
    return path, model


def test_evaluate_checkpoint_matches_the_model_it_was_saved_from(checkpoint, dataset_dir):
    path, model = checkpoint
    result = evaluate_checkpoint(path, dataset_dir, device="cpu", batch_size=7)
    arrays = load_arrays(dataset_dir)
    expected = evaluate(model, torch.from_numpy(np.array(arrays.test_images)), torch.from_numpy(np.array(arrays.test_labels)),
                        BatchTransform(64, IMAGENET_MEAN, IMAGENET_STD, CPU, False), 10, batch_size=20)
    assert result.num_images == 20
    assert [sum(row) for row in result.confusion] == [2] * 10
    assert result.confusion == expected.confusion
    assert result.accuracy == expected.accuracy
    assert result.loss == pytest.approx(expected.loss, rel=1e-5)


def test_evaluate_checkpoint_on_a_subset(checkpoint, dataset_dir):
    result = evaluate_checkpoint(checkpoint[0], dataset_dir, device="cpu", subset=10)
    assert result.num_images == 10 and [sum(row) for row in result.confusion] == [1] * 10


def test_checkpoint_for_other_classes_is_refused(tmp_path, dataset_dir):
    path = tmp_path / "alexnet-01.pt"
    names = ["cat", "dog", "ship"]
    save_epoch_checkpoint(path, new_alexnet(3).state_dict(), {"class_names": names, "image_size": 64, "mean": IMAGENET_MEAN,
                                                               "std": IMAGENET_STD, "epoch": 1})
    with pytest.raises(CheckpointError, match="trained on 3 classes"):
        evaluate_checkpoint(path, dataset_dir, device="cpu")


def test_foreign_or_damaged_checkpoint_is_refused(tmp_path, dataset_dir):
    plain = tmp_path / "plain.pt"
    torch.save(new_alexnet(10).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a checkpoint of this pipeline"):
        evaluate_checkpoint(plain, dataset_dir, device="cpu")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        evaluate_checkpoint(truncated, dataset_dir, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate_checkpoint(tmp_path / "missing.pt", dataset_dir, device="cpu")


# --- checkpoints this process wrote: evaluated from memory, never stale -----------------------


def write_checkpoint(path: Path, model: nn.Module, dataset_dir: Path, epoch: int = 1) -> str:
    meta = {"class_names": CLASS_NAMES, "num_classes": 10, "image_size": 64, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "config": {}, "seed": 5, "epoch": epoch, "dataset_key": read_meta(dataset_dir)["key"]}
    return save_epoch_checkpoint(path, {k: v.clone() for k, v in model.state_dict().items()}, meta)


def test_checkpoint_just_written_is_evaluated_without_reading_the_file(tmp_path, dataset_dir, monkeypatch):
    torch.manual_seed(11)
    path = tmp_path / "alexnet-01.pt"
    sha256 = write_checkpoint(path, new_alexnet(10), dataset_dir)
    assert sha256 == sha256_of(path)  # hashed while writing, and right
    recent_checkpoints.clear()
    from_file = evaluate_checkpoint(path, dataset_dir, device="cpu")
    write_checkpoint(path, load_checkpoint_model(path), dataset_dir)  # same weights, same bytes, now in memory

    def no_disk(*args, **kwargs):
        raise AssertionError("torch.load was called for a checkpoint kept in memory")

    monkeypatch.setattr(torch, "load", no_disk)
    assert evaluate_checkpoint(path, dataset_dir, device="cpu") == from_file


def load_checkpoint_model(path: Path) -> nn.Module:
    from alexnet_pipeline.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(path))


def test_checkpoint_file_changed_after_writing_is_read_again(tmp_path, dataset_dir):
    """The copy in memory is found by the file's hash: a file replaced (a
    re-run, a copy from elsewhere) or edited since is read from disk."""
    from alexnet_pipeline.checkpoint import load_checkpoint

    torch.manual_seed(12)
    path = tmp_path / "alexnet-01.pt"
    first, second = new_alexnet(10), new_alexnet(10)
    write_checkpoint(path, first, dataset_dir)
    other = tmp_path / "other.pt"
    write_checkpoint(other, second, dataset_dir)
    shutil.copyfile(other, path)  # same inode, new bytes and mtime
    assert torch.equal(load_checkpoint(path)["model"]["classifier.6.weight"], second.state_dict()["classifier.6.weight"])
    assert evaluate_checkpoint(path, dataset_dir, device="cpu") == evaluate_checkpoint(other, dataset_dir, device="cpu")

    write_checkpoint(path, first, dataset_dir)
    damaged = bytearray(path.read_bytes())
    damaged[-200:] = bytes(200)  # the zip's directory: unreadable, and must be reported
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="damaged"):
        evaluate_checkpoint(path, dataset_dir, device="cpu")


def test_checkpoints_kept_in_memory_stay_within_the_budget():
    from alexnet_pipeline.checkpoint import RecentCheckpoints

    def ckpt(value: float) -> dict:
        return {"model": {"w": torch.full((256,), value)}}  # 1 KiB each

    kept = RecentCheckpoints(budget_bytes=2048)
    for i in range(3):
        kept.remember(f"sha{i}", ckpt(float(i)))
    assert kept.take("sha0") is None  # oldest out
    assert kept.take("sha1")["model"]["w"][0] == 1
    kept.remember("big", {"model": {"w": torch.zeros(1024)}})  # larger than the whole budget: not kept
    assert kept.take("big") is None and kept.take("sha2")["model"]["w"][0] == 2
    assert kept.take("sha2") is None  # taken once
    assert kept.take(None) is None


def test_checkpoint_with_wrong_weight_shapes_is_refused(tmp_path, dataset_dir):
    path = tmp_path / "alexnet-01.pt"
    model = new_alexnet(10)
    write_checkpoint(path, model, dataset_dir)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not fit AlexNet with 10 classes.*features.0.weight"):
        evaluate_checkpoint(path, dataset_dir, device="cpu")


def test_test_set_too_large_for_the_device_is_streamed_with_the_same_result(checkpoint, dataset_dir, monkeypatch):
    from alexnet_pipeline import device_data, evaluate as evaluate_module

    resident = evaluate_checkpoint(checkpoint[0], dataset_dir, device="cpu", batch_size=7)
    monkeypatch.setattr(evaluate_module, "_eval_sets", {})
    monkeypatch.setattr(device_data, "HOST_RESIDENT_LIMIT", 0)
    streamed = evaluate_checkpoint(checkpoint[0], dataset_dir, device="cpu", batch_size=7)
    assert not next(iter(evaluate_module._eval_sets.values())).resident
    assert streamed == resident and streamed.num_images == 20


def test_recorded_hash_is_trusted_until_the_file_changes(tmp_path, dataset_dir, monkeypatch):
    """A checkpoint's hash is computed while writing and recorded beside it: a
    later process (simulated by forgetting this one's memory) gets it without
    reading 228 MB, and any change to the file, even one that keeps its size
    and sets its mtime back, makes it hashed again."""
    import hashlib
    import os

    from alexnet_pipeline import integrity

    path = tmp_path / "alexnet-01.pt"
    sha256 = write_checkpoint(path, new_alexnet(10), dataset_dir)
    integrity.forget_known_hashes()

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read although its recorded hash still holds")

    with monkeypatch.context() as m:
        m.setattr(hashlib, "file_digest", no_reading)
        assert integrity.sha256_file(path) == sha256 == integrity.known_sha256(path)

    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights: torch.load would not notice
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert integrity.known_sha256(path) is None
    assert integrity.sha256_file(path) == sha256_of(path) != sha256
