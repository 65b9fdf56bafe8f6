"""Pack a 32x32 image folder (a JPEG copy of CIFAR-10, say)
into the official `cifar-10-python.tar.gz` format, for timing the default
CIFAR-10 path where the real archive cannot be downloaded (the GPU machine
has no network). Its MD5 differs from the official one: run the pipeline on
it with --no-verify.

    python benchmarks/cifar_archive_from_folder.py /tmp/cifar10-jpeg /tmp/cifar-data
    python flows/full_run.py --data-dir /tmp/cifar-data --no-verify --weights none

Images are taken in sorted file order per class and interleaved class by
class, the train split cut into the official five batches.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cifar_archive import write_cifar_archive  # noqa: E402


def read_split(split_dir: Path, class_names: list[str]) -> tuple[np.ndarray, list[int], list[str]]:
    per_class = [sorted(p for p in (split_dir / name).iterdir() if p.is_file()) for name in class_names]
    # Interleave the classes (0, 1, ..., 9, 0, 1, ...): the official batches are mixed.
    files = [(paths[i], label) for i in range(max(map(len, per_class)))
             for label, paths in enumerate(per_class) if i < len(paths)]

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if array.shape != (32, 32, 3):
            raise SystemExit(f"{path} is {array.shape[1]}x{array.shape[0]}, not 32x32: not a CIFAR-sized image")
        return array

    with ThreadPoolExecutor() as pool:
        images = np.stack(list(pool.map(load, [p for p, _ in files])))
    return images, [label for _, label in files], [p.name for p, _ in files]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_folder", type=Path, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("out_dir", type=Path, help="where cifar-10-python.tar.gz is written")
    args = p.parse_args(argv)
    class_names = sorted(d.name for d in (args.image_folder / "train").iterdir() if d.is_dir())
    cifar_order = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if sorted(cifar_order) == class_names:
        class_names = cifar_order  # CIFAR-10's own label order
    train_images, train_labels, train_names = read_split(args.image_folder / "train", class_names)
    test_images, test_labels, test_names = read_split(args.image_folder / "test", class_names)
    archive = write_cifar_archive(args.out_dir, class_names, (train_images, train_labels, train_names),
                                  (test_images, test_labels, test_names))
    print(f"{archive}: {len(train_labels)} train and {len(test_labels)} test images, classes {', '.join(class_names)}")
    return archive


if __name__ == "__main__":
    main()
