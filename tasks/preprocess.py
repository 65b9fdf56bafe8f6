from __future__ import annotations

from pathlib import Path

from prefect import task

from alexnet_pipeline.cache import is_complete, preprocess
from alexnet_pipeline.config import PipelineConfig, config_from_dict
from alexnet_pipeline.timing import StageTimer
from tasks import download
from tasks.caching import ACROSS_RUNS, SourceFiles, call_cached


# The source folder's file listing is part of the key: an edited image folder
# is preprocessed again, even though the config did not change.
@task(name="preprocess", cache_policy=ACROSS_RUNS + SourceFiles(params=("source_dir",))
      + SourceFiles(params=("image_folder",), subfolders=("train", "test")), persist_result=True)
def preprocess_data(config: dict, source_dir: str | None, image_folder: str | None) -> str:
    """Folder of cached uint8 arrays for this source (built once, by content).
    `source_dir`: extracted CIFAR-10 batches; `image_folder`: an image folder."""
    cfg = config_from_dict(config)
    return str(preprocess(cfg.data, cfg.train.image_size, Path(source_dir) if source_dir else None))


def still_valid(dataset_dir: str) -> bool:
    return is_complete(Path(dataset_dir))


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
        return call_cached(preprocess_data, still_valid, config=cfg.to_dict(), source_dir=source_dir,
                           image_folder=image_folder)
