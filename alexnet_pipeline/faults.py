"""Fault injection for crash tests (developer use only, see tests/README.md).

Set ALEXNET_PIPELINE_CRASH_AT to a point name, optionally with a number:

    ALEXNET_PIPELINE_CRASH_AT=mid-epoch:2 python flows/full_run.py ...

and the process kills itself with SIGKILL (no clean-up, no finally blocks)
when it reaches that point. N is an epoch number. The points, in the order a
run reaches them, are listed in POINTS below; tests/test_crash_points.py
checks that every one of them has a crash-and-resume test.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "ALEXNET_PIPELINE_CRASH_AT"

POINTS = {
    "download": "before fetching the archive (no local copy in --data-dir)",
    "extract": "with the archive open, before extracting into a temporary folder",
    "preprocess": "after the first array of a new cache entry is written to its temporary folder",
    "mid-epoch": "after the middle step of epoch N, before the epoch ends (earlier epochs' checkpoints, "
                 "written in the background, are let finish first, so the state is the same every time)",
    "checkpoint-write": "with alexnet-NN.pt written to its temporary name, before the rename",
    "resume-write": "alexnet-NN.pt at its temporary name and the epoch's resume state complete as "
                    "resume.pt.next, before the checkpoint's rename (the epoch is not committed: trained again)",
    "commit": "alexnet-NN.pt complete under its name (committed), resume.pt.next not yet renamed to resume.pt "
              "(the re-run completes the rename: the epoch is not trained again)",
    "after-checkpoint": "alexnet-NN.pt and resume.pt both complete",
    "evaluate": "after loading checkpoint N for evaluation",
    "prune": "epoch N evaluated and the run record naming the checkpoints kept saved, before the others "
             "are deleted",
    "finish": "the run record says finished, resume.pt not yet deleted",
    "report": "accuracy.csv and the figures written, report.md not yet",
}


def armed(name: str, number: int | None = None) -> bool:
    """Whether the process is set to die at this point."""
    wanted = os.environ.get(ENV_VAR)
    return bool(wanted) and wanted == (name if number is None else f"{name}:{number}")


def crash_point(name: str, number: int | None = None) -> None:
    if armed(name, number):
        os.kill(os.getpid(), signal.SIGKILL)
