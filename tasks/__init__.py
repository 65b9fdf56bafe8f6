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

for _logger in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_logger).addFilter(_NoTracebackForUserErrors())
