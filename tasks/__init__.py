"""Thin Prefect tasks around alexnet_pipeline: each calls the library and adds
caching, logging and artifacts. Importing this package sets Prefect defaults
that suit a local run (no telemetry, a patient temporary server, the
library's log lines in Prefect's logs) unless the environment already says."""

import os

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "alexnet_pipeline",
    # A command's checks before its flow starts log through the library's
    # logger too: shown in the terminal, with nothing to send to a server yet.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}.items():
    os.environ.setdefault(_name, _value)

import collections  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from alexnet_pipeline.errors import PipelineError  # noqa: E402
from alexnet_pipeline.files import shown_path  # noqa: E402


class _OneLineForUserErrors(logging.Filter):
    """A PipelineError is a message for the user (bad input, offline, ...).
    Prefect would log it four times (the task's failure with a 30-line
    traceback, the task's final state, the flow's failure, the flow's final
    state), each repeating the message. Kept: one line, the first time, with
    the message; under a command line that prints it as its `error:` line
    (see command_line_reports_errors), one line naming the error's kind."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            if any(seen is exc for seen in _reported_errors):
                return False  # the flow's echo of a task's failure
            _reported_errors.append(exc)
            record.exc_info, record.exc_text = None, None
            if _command_line_prints_errors:
                record.msg, record.args = "failed (%s); the command's error: line says why", (type(exc).__name__,)
            else:
                record.msg, record.args = "failed: %s", (str(exc),)
            return True
        message = record.getMessage() if record.msg else ""
        if message.startswith("Finished in state Failed(") and any(f"{name}: " in message for name in _user_error_names()):
            record.msg, record.args = "Finished in state Failed", ()
        return True


def _user_error_names() -> set[str]:
    names, todo = set(), [PipelineError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


_reported_errors: collections.deque = collections.deque(maxlen=64)
_command_line_prints_errors = False


def command_line_reports_errors() -> None:
    """Called by a command line that prints a PipelineError itself as its
    `error:` line: Prefect's log then only names the failure's kind."""
    global _command_line_prints_errors
    _command_line_prints_errors = True


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
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            folder = str(Path(exc.filename).parent) if exc.filename else _storage_folder()
        elif isinstance(exc, ValueError) and (taken := _RECORD_NOT_A_FILE.match(str(exc))):
            # A record's name taken by a folder, FIFO or device (reading it
            # was already a cache miss): Prefect raises ValueError, not OSError.
            reason = f"{shown_path(taken['path'])} is not a file; delete it"
            folder = str(Path(taken["path"]).parent)
        else:
            return True
        unsaved_results.append((folder, reason))
        record.msg, record.args = ("could not save this result in %s (%s): the run goes on, but running it again "
                                   "will redo this stage"), (folder, reason)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Prefect's wording (prefect/filesystems.py, LocalFileSystem.write_path).
_RECORD_NOT_A_FILE = re.compile(r"Path (?P<path>.+) already exists and is not a file\.?$", re.DOTALL)


def _storage_folder() -> str:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return str(PREFECT_LOCAL_STORAGE_PATH.value())


for _logger in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_logger).addFilter(_OneLineForUserErrors())
    logging.getLogger(_logger).addFilter(_UnsavedResultWarning())
