"""Fault injection for crash tests (developer use only, see tests/README.md).

Set ALEXNET_PIPELINE_CRASH_AT to a point name, optionally with a number:

    ALEXNET_PIPELINE_CRASH_AT=mid-epoch:2 python flows/full_run.py ...

and the process kills itself with SIGKILL (no clean-up, no finally blocks)
when it reaches that point. Points: download, extract, preprocess,
mid-epoch:N, checkpoint-write:N, after-checkpoint:N, evaluate:N, report.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "ALEXNET_PIPELINE_CRASH_AT"


def crash_point(name: str, number: int | None = None) -> None:
    wanted = os.environ.get(ENV_VAR)
    if not wanted:
        return
    here = name if number is None else f"{name}:{number}"
    if wanted == here:
        os.kill(os.getpid(), signal.SIGKILL)
