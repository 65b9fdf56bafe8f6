"""Classify image files with a trained checkpoint, through the evaluation's
own code path: the file is decoded as the preprocess cache decodes an
image-folder file (data.decode_image, at the checkpoint's stored size), then
resized and normalised by the same BatchTransform and scored by the same
forward pass (evaluate.prepared_model, evaluate.batch_logits). Predicting a
run's own test folder therefore reproduces its evaluation image for image.

    from alexnet_pipeline.predict import predict_files, image_files
    result = predict_files("runs/x/checkpoints/alexnet-07.pt", image_files(["photos/"]), top_k=3)
    result.rows[0]   # {"path": ..., "predicted": "cat", "probability": 0.91, "class_1": "cat", ...}

Files that cannot be decoded are rows with an `error` and no prediction.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_pipeline.data import IMAGE_EXTENSIONS, bounded_map, decode_failure_reason, decode_image
from alexnet_pipeline.errors import CheckpointError, ConfigError, DataError, DeviceMemoryError
from alexnet_pipeline.files import shown_path

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Preprocessing:
    """What turns an image file into the model's input, from the checkpoint:
    decode to RGB, centre-crop to a square and resize to `stored_size`
    (PIL, bilinear), then resize to `image_size` (bilinear; antialiased when
    shrinking) and normalise with `mean`/`std` on 0-1 values."""

    stored_size: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def in_words(self) -> str:
        return (f"decode to RGB (transparency on white); centre-crop to a square; resize to "
                f"{self.stored_size}x{self.stored_size} (PIL bilinear); scale to 0-1; subtract mean {list(self.mean)} "
                f"and divide by std {list(self.std)} per channel; resize to {self.image_size}x{self.image_size} "
                f"(bilinear, align_corners=False, antialiased when shrinking); NCHW float32")


def checkpoint_preprocessing(ckpt: dict, source: str | Path = "the checkpoint") -> Preprocessing:
    """The checkpoint's preprocessing. Checkpoints record their stored size;
    older ones are read from their config (CIFAR-10 is stored at 32, an
    image folder at data.stored_size) or their preprocess cache entry."""
    stored = ckpt.get("stored_size") or _stored_size_from_config(ckpt)
    if not stored:
        raise CheckpointError(
            f"{source} does not say at what size its images were stored (written before checkpoints recorded it, "
            "and its preprocessed cache is not where its config says); train it again, or predict from a newer run"
        )
    return Preprocessing(int(stored), int(ckpt["image_size"]), tuple(ckpt["mean"]), tuple(ckpt["std"]))


def _stored_size_from_config(ckpt: dict) -> int | None:
    data = (ckpt.get("config") or {}).get("data", {})
    if data.get("dataset") == "cifar10":
        return 32
    if data.get("stored_size"):
        return int(data["stored_size"])
    entry = preprocessed_entry(ckpt)
    try:
        return int(json.loads((entry / "meta.json").read_text())["stored_size"]) if entry else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def preprocessed_entry(ckpt: dict) -> Path | None:
    """The preprocess cache entry of the data the checkpoint was trained on,
    where its config says the cache is on this machine; None if not there."""
    data = (ckpt.get("config") or {}).get("data", {})
    if not ckpt.get("dataset_key") or not data.get("dataset"):
        return None
    from alexnet_pipeline.cache import cache_root

    name = f"{data['dataset']}-{ckpt['dataset_key']}"
    # Where the cache is now, then inside the image folder, where runs before
    # the user cache folder put it.
    roots = [cache_root(data["dataset"], data.get("data_dir", "."), data.get("cache_dir")),
             Path(data.get("data_dir", ".")).expanduser() / "preprocessed"]
    return next((root / name for root in roots if (root / name / "meta.json").is_file()), None)


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files to classify: each file as given, whatever its name, and the
    files inside each folder, recursively (hidden ones left out), sorted by
    path within the folder. A folder's files that do not have an image
    extension are kept too: they are reported, not silently dropped."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = []
            for folder, folders, names in os.walk(path):
                folders[:] = [d for d in folders if not d.startswith(".")]
                inside += [Path(folder, name) for name in names if not name.startswith(".")]
            found += sorted(inside)
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{shown_path(path)} does not exist; give image files or folders of them")
    if not found:
        raise DataError(f"no files in {', '.join(shown_path(Path(i)) for i in inputs)}; give image files or folders of them")
    return found


@dataclass
class PredictResult:
    checkpoint: str
    class_names: list[str]
    top_k: int
    rows: list[dict]
    preprocessing: Preprocessing
    device: str
    seconds: float
    failed: list[str] = field(default_factory=list)  # "path (reason)" lines

    @property
    def num_predicted(self) -> int:
        return len(self.rows) - len(self.failed)

    def columns(self) -> list[str]:
        ranked = [name for i in range(1, self.top_k + 1) for name in (f"class_{i}", f"probability_{i}")]
        return ["path", "predicted", "probability", *ranked, "error"]

    def folder_accuracy(self) -> tuple[int, int] | None:
        """(correct, predicted) counting each image's parent folder name as
        its true class, when every predicted image sits in a folder named
        after a class (an image folder's test/ split, say); else None."""
        predicted = [r for r in self.rows if not r["error"]]
        names = set(self.class_names)
        if not predicted or any(Path(r["path"]).parent.name not in names for r in predicted):
            return None
        return sum(Path(r["path"]).parent.name == r["predicted"] for r in predicted), len(predicted)


def _decoder(preprocessing: Preprocessing):
    def decode(path: Path) -> tuple[np.ndarray | None, str]:
        from PIL import UnidentifiedImageError

        try:
            return decode_image(path, preprocessing.stored_size), ""
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
            if isinstance(exc, UnidentifiedImageError) and path.suffix.lower() not in IMAGE_EXTENSIONS:
                return None, "not an image file"
            return None, decode_failure_reason(path, exc)
    return decode


def predict_files(checkpoint: str | Path, files: list[Path], top_k: int = DEFAULT_TOP_K, device: str = "auto",
                  batch_size: int | None = None, workers: int | None = None) -> PredictResult:
    """Classify `files` with the checkpoint, `batch_size` images at a time
    (default: the batch size its evaluation used), decoding on `workers`
    threads ahead of the model."""
    import torch

    from alexnet_pipeline.checkpoint import load_checkpoint
    from alexnet_pipeline.device_data import resolve_device
    from alexnet_pipeline.evaluate import batch_logits, prepared_model

    if top_k < 1:
        raise ConfigError(f"--top-k: must be at least 1, got {top_k}")
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    preprocessing = checkpoint_preprocessing(ckpt, checkpoint)
    class_names = list(ckpt["class_names"])
    k = min(top_k, len(class_names))
    batch_size = batch_size or int((ckpt.get("config") or {}).get("train", {}).get("eval_batch_size", 1000))
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    model, transform = prepared_model(ckpt, dev, source=checkpoint)
    decode = _decoder(preprocessing)
    rows: list[dict] = []
    failed: list[str] = []
    pending_paths: list[Path] = []
    pending_images: list[np.ndarray] = []
    started = time.perf_counter()

    @torch.no_grad()
    def flush() -> None:
        batch = torch.from_numpy(np.stack(pending_images))
        if dev.type == "cuda":
            batch = batch.pin_memory()
        try:
            logits = batch_logits(model, batch.to(dev, non_blocking=True), transform).float()
        except torch.cuda.OutOfMemoryError:
            raise DeviceMemoryError(f"the GPU ran out of memory classifying batches of {batch_size} images; "
                                    f"pass a smaller --batch-size (e.g. {max(1, batch_size // 4)})") from None
        probabilities, indices = torch.softmax(logits, 1).topk(k, dim=1)
        for path, probs, classes in zip(pending_paths, probabilities.cpu().tolist(), indices.cpu().tolist()):
            row = {"path": str(path), "predicted": class_names[classes[0]], "probability": probs[0]}
            for i, (c, p) in enumerate(zip(classes, probs), start=1):
                row[f"class_{i}"], row[f"probability_{i}"] = class_names[c], p
            rows.append({**row, "error": ""})
        pending_paths.clear()
        pending_images.clear()

    with ThreadPoolExecutor(workers or os.cpu_count() or 1, thread_name_prefix="predict-decode") as pool:
        # Decoding runs ahead on the pool (PIL releases the GIL) while the
        # model scores the previous batch: about two batches in flight.
        for path, (image, problem) in zip(files, bounded_map(pool, decode, files, window=2 * batch_size)):
            if image is None:
                rows.append({"path": str(path), "predicted": "", "probability": None, "error": problem})
                failed.append(f"{shown_path(path)} ({problem})")
                continue
            pending_paths.append(path)
            pending_images.append(image)
            if len(pending_images) == batch_size:
                flush()
        if pending_images:
            flush()
    # Rows in the order of `files`: the failed ones were appended as met,
    # the predicted ones a batch later.
    order = {str(p): i for i, p in enumerate(files)}
    rows.sort(key=lambda r: order[r["path"]])
    return PredictResult(str(checkpoint), class_names, k, rows, preprocessing, str(dev),
                         time.perf_counter() - started, failed)


def predictions_csv(result: PredictResult) -> str:
    """The rows as CSV text (predictions.csv): one per file, failed files
    with their reason in `error` and the prediction columns empty."""
    import pandas as pd

    return pd.DataFrame(result.rows, columns=result.columns()).to_csv(index=False)
