"""Errors a user can fix. The command line prints their message alone (no
traceback) and exits non-zero; anything else is a bug and keeps its traceback."""


class PipelineError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""

    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    pass


class WeightsError(PipelineError):
    pass


class CheckpointError(PipelineError):
    pass


class TrainingDivergedError(PipelineError):
    pass


class RunLockedError(PipelineError):
    # Distinct from input errors (1) and config errors (2): retrying later can succeed.
    exit_code = 3


class DeviceMemoryError(PipelineError):
    """The GPU ran out of memory: the message says which setting to lower."""
