"""Ctrl-C for the command-line entry points.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, which
includes the temporary Prefect server the flow started. The server stops at
once; Prefect's engine, interrupted, then keeps retrying to report the crash to
that dead server (minutes) and ends in a traceback. A run folder is built to
survive a kill at any point (atomic files, a lock the kernel releases, resume
from the last complete epoch), so the quickest honest answer to Ctrl-C is to
stop now: say how to resume, stop the temporary server if it still runs, exit 130.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def exit_on_interrupt(message: str = "run the same command again to resume") -> None:
    """Install the SIGINT handler (main thread only)."""

    def handler(signum, frame):
        print(f"\ninterrupted: {message}", file=sys.stderr, flush=True)
        _stop_temporary_servers()
        os._exit(130)

    signal.signal(signal.SIGINT, handler)


def _stop_temporary_servers() -> None:
    """Stop the server this process started, if it is still up (a SIGINT sent
    to this process alone, not to its group, leaves it running)."""
    try:
        from prefect.server.api.server import SubprocessASGIServer

        servers = list(getattr(SubprocessASGIServer, "_instances", {}).values())
    except Exception:  # noqa: BLE001 - Prefect internals may move; exiting matters more
        return
    for server in servers:
        process = getattr(server, "server_process", None)
        if process is None or process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
