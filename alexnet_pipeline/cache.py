"""The preprocessed-data cache: decode once, then training only reads arrays.

    from alexnet_pipeline.cache import preprocess, load_arrays
    dataset_dir = preprocess(cfg.data, image_size=224)   # cached by content
    arrays = load_arrays(dataset_dir)                    # memory-mapped .npy

A cache entry is a folder named after the source's content hash and the
preprocessing parameters. It is built under a temporary name and renamed when
complete, so a folder with the final name is always whole.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alexnet_pipeline import faults
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.data import ImageArrays, ImageFolderSource, cifar10_fingerprint, load_cifar10_arrays
from alexnet_pipeline.errors import DataError
from alexnet_pipeline.files import missing_folders, remove_created_folders, under_umask

log = logging.getLogger(__name__)

# Bump when the decoding or the stored layout changes: old entries are then ignored.
PREPROCESS_VERSION = 1
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
# An image folder's own val/ split, when it has one (meta.json's num_val says).
VAL_ARRAY_NAMES = ("val_images", "val_labels")
META_NAME = "meta.json"
# Lock file inside a temporary entry folder while it is being built.
BUILDING_NAME = ".building"
# A temporary entry folder without its lock file this old was left by a killed run.
ABANDONED_AFTER_S = 600


# An image folder is the user's own (photos, a labelled set others read): its
# default cache goes to a folder of the pipeline's own, per user and per host
# as the XDG base-directory convention has it ($XDG_CACHE_HOME, else
# ~/.cache), on a local disk that training reads fast and that any cleaner of
# caches may empty (entries are rebuilt by content). CIFAR-10's folder is the
# pipeline's download folder: its cache stays beside the archive.
CACHE_APP_NAME = "alexnet-pipeline"


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/alexnet-pipeline, else ~/.cache/alexnet-pipeline (absolute)."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.path.abspath(os.path.expanduser(base))) / CACHE_APP_NAME


def cache_root(dataset: str, data_dir: str | Path, cache_dir: str | Path | None) -> Path:
    """Where the preprocessed entries of this data go: `cache_dir` when
    given, else DATA_DIR/preprocessed for CIFAR-10 and the user cache folder
    (user_cache_dir()/preprocessed) for an image folder."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if dataset == "cifar10":
        return Path(data_dir).expanduser() / "preprocessed"
    return user_cache_dir() / "preprocessed"


def is_complete(dataset_dir: Path) -> bool:
    return (dataset_dir / META_NAME).is_file() and all((dataset_dir / f"{n}.npy").is_file() for n in ARRAY_NAMES)


def entry_problem(dataset_dir: Path) -> str | None:
    """What is wrong with a complete-looking entry, or None when its arrays
    hold what meta.json says: each split's images (count, size, size, 3)
    uint8 and its labels (count,) integers within the class list. Cheap: the
    image arrays' headers and the labels are read, no image, no hash."""
    dataset_dir = Path(dataset_dir)
    try:
        meta = json.loads((dataset_dir / META_NAME).read_text())
        names, size = meta["class_names"], meta["stored_size"]
        counts = {split: meta[f"num_{split}"] for split in ("train", "test", "val") if split != "val" or "num_val" in meta}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{META_NAME} unreadable or incomplete ({getattr(exc, 'strerror', None) or exc})"
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        return f"{META_NAME} has no list of class names"
    if not all(isinstance(v, int) and v >= 0 for v in (size, *counts.values())):
        return f"{META_NAME} has no image size or counts"
    for split, count in counts.items():
        try:
            # mmap: only the header is read; a file shorter than its header
            # says fails here.
            images = np.load(dataset_dir / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
            labels = np.load(dataset_dir / f"{split}_labels.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            return f"{split} arrays unreadable ({getattr(exc, 'strerror', None) or exc})"
        if images.dtype != np.uint8 or images.shape != (count, size, size, 3):
            return (f"{split}_images.npy holds {images.dtype} {images.shape}, "
                    f"meta.json says uint8 {(count, size, size, 3)}")
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            return f"{split}_labels.npy holds {labels.dtype} {labels.shape}, meta.json says {count} integer labels"
        if count and (labels.min() < 0 or labels.max() >= len(names)):
            return (f"{split}_labels.npy has labels {labels.min()}..{labels.max()}, "
                    f"outside the {len(names)} classes 0..{len(names) - 1}")
    return None


def is_usable(dataset_dir: Path) -> bool:
    return is_complete(dataset_dir) and entry_problem(dataset_dir) is None


def read_meta(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / META_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); delete {dataset_dir} "
            "and run again to rebuild it"
        ) from None


def load_arrays(dataset_dir: str | Path, mmap: bool = True) -> ImageArrays:
    """Open a cache entry. Memory-mapped by default: a dataset larger than RAM
    is paged in as batches are read."""
    dataset_dir = Path(dataset_dir)
    if not is_complete(dataset_dir):
        raise DataError(f"preprocessed data {dataset_dir} is missing or incomplete; run the pipeline again to rebuild it")
    problem = entry_problem(dataset_dir)
    if problem:
        raise DataError(f"the preprocessed data in {dataset_dir} is damaged: {problem}; delete {dataset_dir} "
                        "and run again to rebuild it")
    meta = read_meta(dataset_dir)
    mode = "r" if mmap else None
    try:
        arrays = {name: np.load(dataset_dir / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
                  for name in ARRAY_NAMES + (VAL_ARRAY_NAMES if "num_val" in meta else ())}
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the preprocessed data in {dataset_dir} ({getattr(exc, 'strerror', None) or exc}); "
            "check its permissions, or delete it and run again to rebuild it"
        ) from None
    return ImageArrays(**arrays, class_names=meta["class_names"], skipped_files=meta.get("skipped_files", []))


def _write_error(final_dir: Path, exc: OSError) -> DataError:
    reason = exc.strerror or str(exc)
    where = final_dir.parent
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return DataError(f"cannot create the preprocessed cache folder {where}: a file is in the way ({reason}); "
                         "point --cache-dir at a folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DataError(f"cannot write the preprocessed cache under {where} ({reason}); "
                         "point --cache-dir at a folder you can write to")
    # A full disk (numpy may report it as a short write, "N requested and M
    # written", without an errno): say how much room is left.
    try:
        reason += f"; {shutil.disk_usage(where).free / 1e6:.1f} MB left on that disk"
    except OSError:
        pass
    return DataError(
        f"cannot write the preprocessed cache under {where} ({reason}); "
        "free some disk space or point --cache-dir at a disk with room (entries already there are intact)"
    )


def _build_entry(final_dir: Path, fill: Callable[[Path], dict]) -> dict:
    """Build a cache entry in a temporary folder and rename it to `final_dir`.
    `fill(folder)` writes the four arrays there and returns what meta.json
    records about them; the meta dict written is returned."""
    remove_abandoned_builds(final_dir.parent)
    # Folders this call creates, removed again (if still empty) when the build
    # fails: a refused image folder leaves the tree as it was.
    created = missing_folders(final_dir.parent)
    built = False
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent))
    except OSError as exc:
        raise _write_error(final_dir, exc) from None
    try:
        # Held while building: a later run tells a build in progress (locked)
        # from one whose process died (the kernel released the lock).
        with open(tmp / BUILDING_NAME, "w") as building:
            fcntl.flock(building, fcntl.LOCK_EX)
            os.chmod(tmp, under_umask(0o777))
            meta = fill(tmp)
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
            (tmp / BUILDING_NAME).unlink()
            for child in tmp.iterdir():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            if is_usable(final_dir):
                return read_meta(final_dir)  # another run on the same data finished the same entry first
            if final_dir.exists():
                # An entry with this name lost a file or was altered: replace it.
                shutil.rmtree(final_dir)
            os.rename(tmp, final_dir)
            built = True
            return meta
    except OSError as exc:
        if is_usable(final_dir):
            return read_meta(final_dir)  # lost a race to a concurrent run writing the same content
        raise _write_error(final_dir, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not built:
            remove_created_folders(created)


def remove_abandoned_builds(cache_root: Path) -> None:
    """Delete temporary entry folders whose builder was killed (SIGKILL, a
    preempted machine): for a large image folder each one is as big as the
    dataset. A build still in progress holds its lock and is left alone."""
    for partial in Path(cache_root).glob(".*.partial"):
        try:
            with open(partial / BUILDING_NAME, "r+") as building:
                fcntl.flock(building, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being built right now
        except FileNotFoundError:
            # No lock file: created a moment ago (the lock comes next) or
            # already finished with it; only an old one is abandoned.
            try:
                if time.time() - partial.stat().st_mtime < ABANDONED_AFTER_S:
                    continue
            except FileNotFoundError:
                continue
        except OSError:
            continue
        log.warning("Removing %s, left by a preprocessing run that was killed", partial)
        shutil.rmtree(partial, ignore_errors=True)


def preprocess(data: DataConfig, image_size: int | None, source_dir: Path | None = None, progress: bool = True) -> Path:
    """Build (or find) the cache entry for this source; return its folder.
    `image_size` (the model's input) picks the stored size of an image
    folder's images when data.stored_size does not; CIFAR-10 ignores it.

    `source_dir` is the extracted CIFAR-10 batches folder for cifar10 (from
    download.ensure_cifar10) and ignored for image folders (data.data_dir)."""
    started = time.perf_counter()
    root = cache_root(data.dataset, data.data_dir, data.cache_dir)
    if data.dataset == "cifar10":
        if source_dir is None:
            raise ValueError("cifar10 needs the extracted batches folder")
        fingerprint = cifar10_fingerprint(source_dir)
        params = {"dataset": "cifar10", "stored_size": 32}
        source = None
    else:
        source = ImageFolderSource(Path(data.data_dir), workers=data.decode_workers)
        fingerprint = source.fingerprint()
        # "auto" is resolved from the images' sizes only when the entry is built:
        # a cache hit then costs no pass over the image headers.
        params = {"dataset": "imagefolder", "stored_size": data.stored_size or f"auto:{image_size}",
                  "skip_bad_images": data.skip_bad_images}
    key_text = json.dumps({"version": PREPROCESS_VERSION, "source": fingerprint, **params}, sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    dataset_dir = root / f"{params['dataset']}-{key}"
    if is_complete(dataset_dir):
        problem = entry_problem(dataset_dir)
        if problem is None:
            log.info("Preprocessed data found in %s", dataset_dir)
            return dataset_dir
        log.warning("The preprocessed data in %s is damaged (%s): building it again", dataset_dir, problem)
    log.info("Preprocessing %s into %s", data.dataset, dataset_dir)

    def fill(folder: Path) -> dict:
        if source is None:
            arrays = load_cifar10_arrays(source_dir)
            for name in ARRAY_NAMES:
                np.save(folder / f"{name}.npy", getattr(arrays, name), allow_pickle=False)
                faults.crash_point("preprocess")
            described = {"class_names": arrays.class_names, "num_train": int(len(arrays.train_labels)),
                         "num_test": int(len(arrays.test_labels)), "skipped_files": []}
        else:
            params["stored_size"] = data.stored_size or source.auto_stored_size(image_size)
            described = source.decode_to(folder, params["stored_size"], skip_bad_images=data.skip_bad_images,
                                         progress=progress)
        return {
            "version": PREPROCESS_VERSION,
            "key": key,
            "source_fingerprint": fingerprint,
            **params,
            "source": str(source_dir if source is None else source.root),
            **described,
            "seconds": round(time.perf_counter() - started, 3),
        }

    meta = _build_entry(dataset_dir, fill)
    log.info("Cached %d train and %d test images (%dx%d) in %.1f s", meta["num_train"], meta["num_test"],
             meta["stored_size"], meta["stored_size"], meta["seconds"])
    return dataset_dir
