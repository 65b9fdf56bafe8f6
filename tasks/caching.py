"""Cache policies that survive into a new run.

Prefect's default policy includes the flow run id, so a new run would redo
everything. Here keys come from the task's inputs, its source, and the
version of the stage's logic: a constant in the library module behind the
stage (PREPROCESS_VERSION in cache.py, REPORT_VERSION in report.py; those of
training and evaluation in versions.py, which needs no torch to import),
bumped by hand when a change there changes what the stage returns. Editing a
comment or another stage's code then invalidates nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from alexnet_pipeline.integrity import listing_digest, sha256_file


@dataclass
class StageVersion(CachePolicy):
    """The stage's name and logic version, e.g. "evaluate/1"."""

    stage: str = ""
    version: int | str = 1

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        return f"{self.stage}/{self.version}"


@dataclass
class FileContent(CachePolicy):
    """Key on the bytes of the file named by input `param`, not on its path
    (read only when no hash recorded at writing still holds for it)."""

    param: str = "path"

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        return sha256_file(inputs[self.param])


@dataclass
class SourceFiles(CachePolicy):
    """Key on the listing of the files under the input folders `params`:
    each file's relative path, size, modification time, change time (ctime)
    and inode (integrity.listing_digest). No file is read, and it still changes
    when an image is added, removed, rewritten or replaced, even by one of
    the same size whose modification time was set back (that sets ctime).
    A miss runs the library, which keys its cache by content."""

    params: tuple[str, ...] = ()
    # Only these subfolders of each folder, when given: an image folder's
    # train/ and test/, not the preprocessed cache that lives beside them by
    # default (scanning it would change the key once the first run wrote it).
    subfolders: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        digest = hashlib.sha256()
        for param in self.params:
            root = inputs.get(param)
            if not root or not Path(root).is_dir():
                digest.update(f"{param}:absent".encode())
                continue
            for folder in [Path(root) / sub for sub in self.subfolders] or [Path(root)]:
                files = sorted(path for path in folder.rglob("*") if path.is_file())
                digest.update(f"{param}:{listing_digest(root, files)}\n".encode())
        return digest.hexdigest()


def across_runs(stage: str, version: int | str) -> CachePolicy:
    """Keyed on every input, the task's source and the stage's version."""
    return INPUTS + TASK_SOURCE + StageVersion(stage=stage, version=version)


def by_fingerprint(stage: str, version: int | str) -> CachePolicy:
    """Fine-tuning is keyed by the config's fingerprint (every setting that
    changes results, a --weights file by content) rather than by the config
    itself: settings that don't change results (--no-verify, where the data
    sits) keep the finished run's cache hit."""
    return (INPUTS - "config") + TASK_SOURCE + StageVersion(stage=stage, version=version)


def by_file_content(param: str, stage: str, version: int | str, *ignored_inputs: str) -> CachePolicy:
    inputs = INPUTS - param
    for name in ignored_inputs:
        inputs = inputs - name
    return FileContent(param=param) + inputs + TASK_SOURCE + StageVersion(stage=stage, version=version)


def call_cached(task, still_valid, **kwargs):
    """Call `task`; if its cached result names files that are gone since
    (deleted by hand, say), run it again with the cache refreshed."""
    result = task(**kwargs)
    if not still_valid(result):
        result = task.with_options(refresh_cache=True)(**kwargs)
    return result
