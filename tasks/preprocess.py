from __future__ import annotations

from pathlib import Path

from prefect import task

from alexnet_pipeline.cache import PREPROCESS_VERSION, is_usable, preprocess
from alexnet_pipeline.config import DataConfig, PipelineConfig
from alexnet_pipeline.timing import StageTimer
from tasks import download
from tasks.caching import SourceFiles, across_runs, call_cached


# Keyed on what the cached arrays depend on, not on the whole config: a new
# lr, seed or epoch count (every trial of a sweep) finds the entry without
# reading an image. The source folder's file listing is part of the key: an
# edited image folder is preprocessed again, though no setting changed.
@task(name="preprocess", cache_policy=across_runs("preprocess", PREPROCESS_VERSION) + SourceFiles(params=("source_dir",))
      + SourceFiles(params=("image_folder",), subfolders=("train", "test")), persist_result=True)
def preprocess_data(data: dict, image_size: int | None, source_dir: str | None, image_folder: str | None) -> str:
    """Folder of cached uint8 arrays for this source (built once, by content).
    `data`: the data section's fields that preprocessing reads; `image_size`:
    the model's input size where it decides the stored size, else None;
    `source_dir`: extracted CIFAR-10 batches; `image_folder`: an image folder."""
    return str(preprocess(DataConfig(**data), image_size, Path(source_dir) if source_dir else None))


def preprocess_inputs(cfg: PipelineConfig) -> dict:
    """What the preprocess task is given (and so keyed on)."""
    data = cfg.data.model_dump(exclude=set(NOT_READ_BY_PREPROCESS))
    # The model's input size only matters when it picks the stored size of
    # an image folder's images; CIFAR-10 is stored at 32x32 whatever it is.
    sizes_images = cfg.data.dataset == "imagefolder" and cfg.data.stored_size is None
    return {"data": data, "image_size": cfg.train.image_size if sizes_images else None}


# Fetching and checking the archive is the download task's business.
NOT_READ_BY_PREPROCESS = ("url", "md5", "verify")


def still_valid(dataset_dir: str) -> bool:
    # A cached path whose arrays were altered since is a miss: the task
    # runs again and the library rebuilds the entry.
    return is_usable(Path(dataset_dir))


def prepared_dataset(cfg: PipelineConfig, timer: StageTimer) -> str:
    """Download (CIFAR-10 only) and preprocess, each cached; returns the
    folder of cached arrays. Shared by the flows that need the data."""
    with timer.stage("download"):
        source_dir = None
        if cfg.data.dataset == "cifar10":
            source_dir = call_cached(download.download_cifar10, download.still_valid, data_dir=cfg.data.data_dir,
                                     url=cfg.data.url, md5=cfg.data.md5, verify=cfg.data.verify)
    with timer.stage("preprocess"):
        image_folder = cfg.data.data_dir if cfg.data.dataset == "imagefolder" else None
        return call_cached(preprocess_data, still_valid, **preprocess_inputs(cfg), source_dir=source_dir,
                           image_folder=image_folder)
