"""CIFAR-10's official archive format written from arrays, for generated test
data (tests/fixtures.py) and for benchmarks/cifar_archive_from_folder.py.
Test and benchmark code only: the pipeline itself never writes an archive.

    write_cifar_archive(folder, class_names, (train_images, train_labels), (test_images, test_labels))
    # -> folder/cifar-10-python.tar.gz: cifar-10-batches-py/{batches.meta, data_batch_1..5, test_batch}
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR_NAME = "cifar-10-batches-py"


def write_tar_gz(archive: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz holding each name -> bytes as a regular file, in order."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


def cifar_batch(images: np.ndarray, labels: list[int], label: str, names: list[str] | None = None) -> bytes:
    """One pickled batch of (N, 32, 32, 3) uint8 images, as the official files hold it."""
    # The official rows are channel-major: 1024 red, 1024 green, 1024 blue.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    names = names if names is not None else [f"img_{i}.png" for i in range(len(images))]
    return pickle.dumps({b"batch_label": label.encode(), b"labels": list(labels), b"data": data,
                         b"filenames": [n.encode() for n in names]}, protocol=2)


def write_cifar_archive(folder: Path, class_names: list[str], train: tuple, test: tuple) -> Path:
    """folder/cifar-10-python.tar.gz from `train` and `test`, each (images,
    labels) or (images, labels, file names); the training split is cut into
    the official five batches in the order given."""
    train_images, train_labels, *train_names = train
    test_images, test_labels, *test_names = test
    train_names = train_names[0] if train_names else [f"img_{i}.png" for i in range(len(train_labels))]
    members = {"batches.meta": pickle.dumps({b"label_names": [n.encode() for n in class_names],
                                             b"num_cases_per_batch": len(train_labels) // 5, b"num_vis": 3072},
                                            protocol=2)}
    for i, rows in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        members[f"data_batch_{i}"] = cifar_batch(train_images[rows], [train_labels[j] for j in rows],
                                                 f"training batch {i} of 5", [train_names[j] for j in rows])
    members["test_batch"] = cifar_batch(test_images, test_labels, "testing batch 1 of 1",
                                        test_names[0] if test_names else None)
    return write_tar_gz(folder / ARCHIVE_NAME, {f"{BATCHES_DIR_NAME}/{name}": payload
                                                for name, payload in members.items()})
