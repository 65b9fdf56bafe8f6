"""Data sources -> uint8 arrays (N, S, S, 3), int64 labels and class names.

    from alexnet_pipeline.data import load_cifar10_arrays, ImageFolderSource
    arrays = load_cifar10_arrays(Path("data/cifar-10-batches-py"))
    ImageFolderSource(Path("~/photos")).decode_to(folder, stored_size=64)   # .npy files in folder

The arrays are what the preprocess cache (cache.py) stores and training reads.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_pipeline import faults
from alexnet_pipeline.download import BATCH_FILES
from alexnet_pipeline.errors import DataError
from alexnet_pipeline.files import shown_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Files listed in an error message before "... and N more".
MAX_LISTED_FILES = 20


@dataclass
class ImageArrays:
    train_images: np.ndarray  # (N, S, S, 3) uint8, RGB
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    # Image-folder files that could not be decoded and were skipped.
    skipped_files: list[str] = field(default_factory=list)
    # An image folder's own validation split (DIR/val/<class>/*), if it has one.
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None


# --- CIFAR-10 python batches ------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official batches are pickles; allow only what they contain (numpy
    arrays, lists, dicts, bytes) so a doctored archive cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Protocol-2 pickles written by Python 3 encode bytes through this.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name} in a CIFAR-10 batch")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except OSError as exc:
        raise _unreadable_batch(path, exc) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({exc}); use the official archive") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _unreadable_batch(path: Path, exc: OSError) -> DataError:
    return DataError(
        f"cannot read the CIFAR-10 batch {path} ({exc.strerror or exc}); check its permissions, or delete "
        f"{path.parent} to extract it again from the archive"
    )


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_batch(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path} lacks the field {exc.args[0]!r} of a CIFAR-10 batch") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and {len(labels)}")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B); make them NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10_arrays(batches_dir: Path) -> ImageArrays:
    meta = _read_batch(batches_dir / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if not names:
        raise DataError(f"{batches_dir / 'batches.meta'} has no label_names")
    train = [_batch_arrays(batches_dir / name) for name in BATCH_FILES if name.startswith("data_batch")]
    test_images, test_labels = _batch_arrays(batches_dir / "test_batch")
    train_labels = np.concatenate([labels for _, labels in train])
    for labels, where in ((train_labels, "train"), (test_labels, "test")):
        if labels.min() < 0 or labels.max() >= len(names):
            raise DataError(f"{batches_dir}: {where} labels outside 0..{len(names) - 1}")
    return ImageArrays(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=names,
    )


def cifar10_fingerprint(batches_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in BATCH_FILES:
        digest.update(name.encode())
        try:
            with open(batches_dir / name, "rb") as f:
                hashlib.file_digest(f, lambda: digest)  # continues `digest` with the file's bytes
        except OSError as exc:
            raise _unreadable_batch(batches_dir / name, exc) from None
    return digest.hexdigest()


# --- Image folders -----------------------------------------------------------


def _raise_walk_error(exc: OSError) -> None:
    raise exc


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    """Image files per class folder. A folder that cannot be listed raises
    its OSError (rglob would skip it without a word, losing its images)."""
    classes = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            class_dir.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"class folder {shown_path(class_dir)}: its name is not valid UTF-8, and class names go into "
                "checkpoints and reports; rename the folder in both train/ and test/"
            ) from None
        files = []
        # Like rglob("*"): symbolic links to folders are listed, not followed.
        for folder, _, names in os.walk(class_dir, onerror=_raise_walk_error):
            for name in names:
                path = Path(folder, name)
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    files.append(path)
        classes[class_dir.name] = sorted(files)
    return classes


def _to_rgb_array(image, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: PIL's convert("RGB") would clip at 255,
        # so rescale the full range to 8 bits first.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white rather than on whatever colour
        # the hidden pixels happen to hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one file to a (size, size, 3) uint8 RGB array (centre crop to a square)."""
    from PIL import Image

    with Image.open(path) as image:
        # JPEGs can be decoded at a reduced scale directly: far faster for photos.
        image.draft("RGB", (size, size))
        # PIL only warns between MAX_IMAGE_PIXELS and twice that: a small file
        # could still inflate to gigabytes per decoding thread.
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{image.width}x{image.height} pixels is more than the {Image.MAX_IMAGE_PIXELS:,} decoded here"
            )
        return _to_rgb_array(image, size)


def _decode_problem(path: Path, exc: Exception) -> str:
    """One line for the list of bad images: the file, and why."""
    return f"{shown_path(path)} ({decode_failure_reason(path, exc)})"


def decode_failure_reason(path: Path, exc: Exception) -> str:
    """Why decode_image failed on `path`, in words."""
    if isinstance(exc, OSError) and exc.errno is not None:
        hint = "; check its permissions" if isinstance(exc, PermissionError) else ""
        return f"cannot read it: {exc.strerror}{hint}"
    # PIL quotes the name with repr(), which writes an undecodable byte as \udcNN: show it as \xNN here too.
    text = shown_path(str(exc).replace(repr(str(path))[1:-1], str(path)))
    return f"{type(exc).__name__}: {text}"


def _short_side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return min(image.size)
    except Exception:  # noqa: BLE001 - a broken file is reported by the decode pass
        return 0


class ImageFolderSource:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (jpg, png, bmp, webp;
    other files ignored), and ``root/val/<class>/*`` when there is one (the
    validation split then, instead of one held out of train/). Class names
    are the folder names, sorted."""

    def __init__(self, root: Path, workers: int | None = None):
        self.root = Path(root).expanduser()
        self.workers = workers or min(32, (os.cpu_count() or 1) * 2)
        self.class_names, self.files = self._scan()
        self.train_files, self.test_files = self.files["train"], self.files["test"]
        self.val_files = self.files.get("val", [])

    def _all_files(self) -> list[tuple[Path, int]]:
        return [item for items in self.files.values() for item in items]

    def _scan(self):
        root = self.root
        if not root.exists():
            raise DataError(f"image folder {root} does not exist; pass --data-dir with train/ and test/ inside")
        if not root.is_dir():
            raise DataError(f"--data-dir {root} is a file; it must be a folder holding train/ and test/")
        if not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"image folder {root} is not readable; check its permissions")
        splits = {}
        for split in ("train", "test", "val"):
            split_dir = root / split
            if split == "val" and not split_dir.is_dir():
                continue  # optional: without it the validation split is held out of train/
            if not split_dir.is_dir():
                raise DataError(
                    f"{root} has no {split}/ folder; an image folder needs {root}/train/<class>/ "
                    f"and {root}/test/<class>/ with the images inside"
                )
            try:
                splits[split] = _class_files(split_dir)
            except OSError as exc:
                hint = "check its permissions" if isinstance(exc, PermissionError) else "check the disk"
                raise DataError(
                    f"cannot read the folder {shown_path(exc.filename or split_dir)} ({exc.strerror}); {hint}"
                ) from None
            if not splits[split]:
                raise DataError(f"{split_dir} has no class folders; put each class's images in {split_dir}/<class>/")
            empty = [name for name, files in splits[split].items() if not files]
            if empty:
                raise DataError(
                    f"class folder {split_dir / empty[0]} has no images (jpg, png, bmp or webp)"
                    + (f"; also empty: {', '.join(empty[1:])}" if len(empty) > 1 else "")
                    + "; add images or remove the folder"
                )
        train_classes = list(splits["train"])
        for other in [s for s in splits if s != "train"]:
            other_classes = list(splits[other])
            if train_classes != other_classes:
                only_train = sorted(set(train_classes) - set(other_classes))
                only_other = sorted(set(other_classes) - set(train_classes))
                raise DataError(
                    f"train/ and {other}/ in {root} have different classes "
                    f"(only in train: {only_train or 'none'}; only in {other}: {only_other or 'none'}); "
                    "both must have the same class folders"
                )
        files = {
            split: [(path, label) for label, name in enumerate(train_classes) for path in splits[split][name]]
            for split in splits
        }
        return train_classes, files

    def fingerprint(self) -> str:
        """Hash of every image file's relative path, label and bytes: the
        cache key. A file that cannot be read counts as such (its error
        number): decoding then lists it as a bad image."""

        def file_digest(item: tuple[Path, int]) -> bytes:
            path, label = item
            # os.fsencode: a name that is not UTF-8 is hashed as its bytes.
            digest = hashlib.sha256(os.fsencode(path.relative_to(self.root)) + f"\0{label}\0".encode())
            try:
                with open(path, "rb") as f:
                    hashlib.file_digest(f, lambda: digest)
            except OSError as exc:
                digest.update(f"\0unreadable:{exc.errno}".encode())
            return digest.digest()

        total = hashlib.sha256()
        with ThreadPoolExecutor(self.workers) as pool:
            for part in bounded_map(pool, file_digest, self._all_files()):
                total.update(part)
        return total.hexdigest()

    def auto_stored_size(self, image_size: int) -> int:
        """The image size, or the largest image's short side when that is smaller
        (storing 32x32 CIFAR JPEGs at 224 would only waste memory)."""
        with ThreadPoolExecutor(self.workers) as pool:
            largest = max(bounded_map(pool, _short_side, [p for p, _ in self._all_files()]))
        return max(8, min(image_size, largest or image_size))

    def decode_to(self, folder: Path, stored_size: int, skip_bad_images: bool = False,
                  progress: bool = True) -> dict:
        """Decode every image into `folder`/{train,test[,val]}_{images,labels}.npy.

        Images go straight into memory-mapped files, a bounded number in
        flight: host memory stays flat however many images there are (1M
        at 224x224 is 150 GB on disk, not in RAM). Returns what meta.json
        records: class names, counts and the skipped files."""
        from tqdm import tqdm

        folder = Path(folder)
        bar = tqdm(total=len(self._all_files()), desc="decode images", unit="img",
                   disable=not progress)
        bad: dict[str, list[int]] = {}
        problems: list[str] = []
        with ThreadPoolExecutor(self.workers) as pool:
            for split, items in self.files.items():
                images = allocated_npy(folder / f"{split}_images.npy", (len(items), stored_size, stored_size, 3))

                def work(index: int, items=items, images=images) -> str | None:
                    path = items[index][0]
                    try:
                        images[index] = decode_image(path, stored_size)
                    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
                        return _decode_problem(path, exc)
                    return None

                bad[split] = []
                for index, problem in enumerate(bounded_map(pool, work, range(len(items)))):
                    if problem:
                        bad[split].append(index)
                        problems.append(problem)
                    bar.update()
                images.flush()
                del images
                faults.crash_point("preprocess")
        bar.close()
        if problems and not skip_bad_images:
            listed = "\n  ".join(problems[:MAX_LISTED_FILES])
            more = f"\n  ... and {len(problems) - MAX_LISTED_FILES} more" if len(problems) > MAX_LISTED_FILES else ""
            raise DataError(
                f"{len(problems)} image file(s) in {self.root} could not be decoded:\n  {listed}{more}\n"
                "Fix or remove them, or pass --skip-bad-images to leave them out (they are listed in the report)."
            )
        counts = {}
        for split, items in self.files.items():
            keep = np.ones(len(items), dtype=bool)
            keep[bad[split]] = False
            labels = np.array([label for _, label in items], dtype=np.int64)[keep]
            missing = sorted(set(range(len(self.class_names))) - set(labels.tolist()))
            if missing:
                names = ", ".join(self.class_names[i] for i in missing)
                raise DataError(f"after skipping bad images, {split}/ has no images left for: {names}")
            if bad[split]:
                _drop_rows(folder / f"{split}_images.npy", keep)
            np.save(folder / f"{split}_labels.npy", labels, allow_pickle=False)
            counts[f"num_{split}"] = int(keep.sum())
        return {"class_names": list(self.class_names), **counts, "skipped_files": problems}


def _drop_rows(path: Path, keep: np.ndarray, rows_per_copy: int = 1024) -> None:
    """Rewrite the .npy at `path` with only the rows in `keep`, a block at a
    time (the array may be larger than memory)."""
    source = np.load(path, mmap_mode="r")
    kept_path = path.with_name(path.name + ".kept")
    target = allocated_npy(kept_path, (int(keep.sum()),) + source.shape[1:])
    rows = np.flatnonzero(keep)
    for start in range(0, len(rows), rows_per_copy):
        block = rows[start:start + rows_per_copy]
        target[start:start + len(block)] = source[block]
    target.flush()
    del source, target
    os.replace(kept_path, path)


def allocated_npy(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 .npy file of `shape`, its blocks reserved on disk, mapped
    for writing. numpy's open_memmap makes a sparse file instead: on a disk
    that fills up, a write through the mapping then kills the process with
    SIGBUS instead of raising an error. Reserving first raises ENOSPC here,
    before any image is decoded."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        os.posix_fallocate(f.fileno(), 0, offset + int(np.prod(shape)))
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=offset, shape=shape)


def bounded_map(pool: ThreadPoolExecutor, fn, items, window: int = 4096):
    """pool.map with at most `window` calls queued: Executor.map submits
    every item up front, a million futures for a million images."""
    pending: collections.deque = collections.deque()
    for item in items:
        if len(pending) >= window:
            yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


# --- Subsets -------------------------------------------------------------------


def balanced_subset(labels: np.ndarray, limit: int | None, num_classes: int) -> np.ndarray:
    """Indices of at most `limit` items, the same count for every class: the
    first ones of each class in stored order, so the choice never changes."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    per_class = limit // num_classes
    if per_class == 0:
        raise DataError(f"--subset {limit} is smaller than the number of classes ({num_classes}); use at least {num_classes}")
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


# Fixed, not the run's seed: every trial and seed of a sweep holds out the
# same images, so their validation accuracies compare on one split.
SPLIT_SEED = 20260601


def validation_split(labels: np.ndarray, fraction: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) into `labels`, both sorted:
    round(fraction * n) of each class's n images held out, drawn with a
    fixed seed (at least one per class when `fraction` > 0 and the class has
    two or more). `fraction` 0: every image trains, none validates."""
    if fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(SPLIT_SEED)
    held_out = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        count = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        held_out.append(rng.permutation(members)[:count])
    val = np.sort(np.concatenate(held_out)) if held_out else np.arange(0)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val.astype(train.dtype)
