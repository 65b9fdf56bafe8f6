"""Thin Prefect tasks around alexnet_pipeline: each calls the library and adds
caching, logging and artifacts. Importing this package sets Prefect defaults
that suit a local run (no telemetry, a patient temporary server, the
library's log lines in Prefect's logs) unless the environment already says."""

import os

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "alexnet_pipeline",
}.items():
    os.environ.setdefault(_name, _value)

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from alexnet_pipeline.errors import PipelineError  # noqa: E402


class _NoTracebackForUserErrors(logging.Filter):
    """A PipelineError is a message for the user (bad input, offline, ...):
    Prefect would log it with a 30-line traceback that buries the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


# Prefect attaches its handlers to the library's logger but leaves its level
# at the root's WARNING: without this, "Resuming ... after epoch 7" and the
# checkpoint writer's figures would never be shown.
_library_logger = logging.getLogger("alexnet_pipeline")
if _library_logger.level == logging.NOTSET:
    _library_logger.setLevel(logging.INFO)

# (folder, reason) of every result Prefect could not save in this process;
# the command lines end with one warning line about them.
unsaved_results: list[tuple[str, str]] = []


class _UnsavedResultWarning(logging.Filter):
    """Prefect logs a task result it could not write (a full disk, say) as an
    ERROR with a 20-line traceback, then carries on with that stage uncached.
    One WARNING line instead, that says what it costs, and the command lines
    end with a warning line. Prefect's wording is matched: should it change,
    its own message shows, as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.exc_info and "committing transaction" in message:
            exc = record.exc_info[1]
        elif "while persisting result" in message and record.args:  # a flow's result; no traceback
            exc = record.args[0] if isinstance(record.args, tuple) else None
        else:
            return True
        if not isinstance(exc, OSError):
            return True
        reason = exc.strerror or str(exc)
        folder = str(Path(exc.filename).parent) if exc.filename else _storage_folder()
        unsaved_results.append((folder, reason))
        record.msg, record.args = ("could not save this result in %s (%s): the run goes on, but running it again "
                                   "will redo this stage"), (folder, reason)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _storage_folder() -> str:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return str(PREFECT_LOCAL_STORAGE_PATH.value())


for _logger in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_logger).addFilter(_NoTracebackForUserErrors())
    logging.getLogger(_logger).addFilter(_UnsavedResultWarning())
