"""Generated test data: a small CIFAR-10 archive in the official pickle
format, a small image folder, and fake torchvision-format AlexNet weights.

Images carry a class-dependent colour and stripe pattern plus noise, so a
model can learn something from a handful of them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tests.cifar_archive import write_cifar_archive

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_images(label: int, count: int, size: int, rng: np.random.Generator, num_classes: int = 10) -> np.ndarray:
    """(count, size, size, 3) uint8 images whose content depends on `label`."""
    base = np.zeros((size, size, 3), dtype=np.float64)
    hue = label / num_classes
    base[..., 0] = 255 * hue
    base[..., 1] = 255 * (1 - hue)
    base[..., 2] = 128
    stripes = (np.arange(size) // max(1, size // (2 + label % 5))) % 2
    base[:, :, 2] += np.where(stripes[None, :] == 1, 80, -80) if label % 2 else np.where(stripes[:, None] == 1, 80, -80)
    noise = rng.normal(0, 25, (count, size, size, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def make_cifar_archive(folder: Path, train_per_class: int = 5, test_per_class: int = 2, seed: int = 0) -> Path:
    """Write cifar-10-python.tar.gz (5 data batches, test batch, meta) into `folder`."""
    rng = np.random.default_rng(seed)

    def split(per_class: int):
        images = np.concatenate([class_images(c, per_class, 32, rng) for c in range(10)])
        labels = [c for c in range(10) for _ in range(per_class)]
        order = rng.permutation(len(labels))
        return images[order], [labels[i] for i in order]

    return write_cifar_archive(folder, CLASS_NAMES, split(train_per_class), split(test_per_class))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha256_of(path: Path) -> str:
    """The file's hash read from disk now (the library's sha256_file trusts
    what this process wrote or hashed before, which is what tests check)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_image_folder(root: Path, classes=("cat", "dog", "ship"), train_per_class: int = 6, test_per_class: int = 3,
                      size: int = 40, ext: str = ".png", seed: int = 0, val_per_class: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png (and root/val/<class>/*.png
    with `val_per_class`)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    splits = [("train", train_per_class), ("test", test_per_class)] + ([("val", val_per_class)] if val_per_class else [])
    for split, count in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(class_images(label, count, size, rng, num_classes=len(classes))):
                Image.fromarray(image).save(folder / f"{i:04d}{ext}")
    return root


def make_fake_weights(path: Path, num_classes: int = 1000, seed: int = 0) -> Path:
    """A torchvision-format AlexNet state_dict (random values), as torch.save writes it."""
    import torch
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet(weights=None, num_classes=num_classes).state_dict(), path)
    return path


def trained_image_folder_run(root: Path, classes: tuple[str, ...]) -> dict:
    """A two-epoch run on a JPEG image folder whose images (40x40) are stored
    smaller than the model's input (64), so both resizes are exercised, with
    the report's table (each epoch's test accuracy, as selection reads it)."""
    import pandas as pd

    from alexnet_pipeline.cache import preprocess
    from alexnet_pipeline.config import resolve_config
    from alexnet_pipeline.evaluate import evaluate_checkpoint
    from alexnet_pipeline.train import train_run

    data = make_image_folder(root / "photos", classes=classes, train_per_class=6, test_per_class=5, size=40, ext=".jpg")
    overrides = {"data.dataset": "imagefolder", "data.data_dir": str(data), "model.weights": "none",
                 "train.epochs": 2, "train.batch_size": 6, "train.image_size": 64, "train.device": "cpu",
                 "train.eval_batch_size": 4}
    cfg = resolve_config("default", overrides=overrides)
    dataset_dir = preprocess(cfg.data, cfg.train.image_size, progress=False)
    run_dir = root / "runs" / "photos-run"
    train_run(cfg, dataset_dir, run_dir, progress=False)
    accuracies = [evaluate_checkpoint(p, dataset_dir, device="cpu").accuracy
                  for p in sorted((run_dir / "checkpoints").glob("alexnet-*.pt"))]
    pd.DataFrame({"epoch": [1, 2], "test_acc": accuracies}).to_csv(run_dir / "accuracy.csv", index=False)
    return {"data": data, "dataset_dir": dataset_dir, "run_dir": run_dir}
