from __future__ import annotations

from pathlib import Path

from prefect import task

from alexnet_pipeline.cache import is_complete, preprocess
from alexnet_pipeline.config import config_from_dict
from tasks.caching import ACROSS_RUNS, SourceFiles


# The source folder's file listing is part of the key: an edited image folder
# is preprocessed again, even though the config did not change.
@task(name="preprocess", cache_policy=ACROSS_RUNS + SourceFiles(params=("source_dir", "image_folder")),
      persist_result=True)
def preprocess_data(config: dict, source_dir: str | None, image_folder: str | None) -> str:
    """Folder of cached uint8 arrays for this source (built once, by content).
    `source_dir`: extracted CIFAR-10 batches; `image_folder`: an image folder."""
    cfg = config_from_dict(config)
    return str(preprocess(cfg.data, cfg.train.image_size, Path(source_dir) if source_dir else None))


def still_valid(dataset_dir: str) -> bool:
    return is_complete(Path(dataset_dir))
