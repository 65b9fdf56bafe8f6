from __future__ import annotations

from pathlib import Path

from prefect import task

from alexnet_pipeline.download import DOWNLOAD_VERSION, batches_complete, ensure_cifar10
from tasks.caching import across_runs


# No retries: offline, the user should hear within seconds where to put the
# archive; a re-run resumes anyway.
@task(name="download-cifar10", cache_policy=across_runs("download", DOWNLOAD_VERSION), persist_result=True)
def download_cifar10(data_dir: str, url: str, md5: str, verify: bool) -> str:
    """Path of the extracted batches (downloaded only when not already here)."""
    return str(ensure_cifar10(data_dir, url=url, md5=md5, verify=verify))


def still_valid(batches_dir: str) -> bool:
    return batches_complete(Path(batches_dir))
