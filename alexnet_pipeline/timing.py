"""Seconds per stage, for the report."""

from __future__ import annotations

import contextlib
import time


class StageTimer:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        # Seconds after the process started at which its start-up reached
        # each step (the command line fills it): the "start-up" stage's parts.
        self.start_up: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)
