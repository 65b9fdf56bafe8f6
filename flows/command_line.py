"""What the three command lines (flows/full_run.py, evaluate.py, sweep.py)
share: flags generated from the config's fields, and one way of running a
flow that turns a user's error into an `error:` line and an exit code."""

from __future__ import annotations

import argparse
import sys
import time
import typing
from collections.abc import Callable
from typing import Any, Literal

import tasks
from alexnet_pipeline.config import RUN_OPTIONS, RunOption, base_type
from alexnet_pipeline.errors import PipelineError
from flows.interrupt import RESUME_HINT, exit_on_signals
from flows.prefect_server import check_result_storage, prefect_server, start_early, warn_unsaved_results


def _argparse_type(option: RunOption) -> dict[str, Any]:
    if option.absolute is not None:  # a path: absolute before it becomes a flow parameter
        return {"type": option.absolute}
    kind = base_type(option.field.annotation)
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    return {"type": kind} if kind in (int, float) else {}


def add_run_flags(parser: argparse.ArgumentParser, names: list[str] | None = None,
                  help: dict[str, str] | None = None) -> None:
    """One flag per run setting (config fields marked Flag()), or per `names`;
    `help` replaces a flag's help where a command means it differently.
    Each flag's value is stored under the setting's name; not given: None."""
    for name in names or RUN_OPTIONS:
        option = RUN_OPTIONS[name]
        flag = option.flag.flag or "--" + name.replace("_", "-")
        text = (help or {}).get(name, option.help)
        if option.is_switch:
            parser.add_argument(flag, dest=name, action="store_const", const=option.flag.const, help=text)
        else:
            parser.add_argument(flag, dest=name, metavar=option.flag.metavar, help=text, **_argparse_type(option))


def describe_parameters(fn: Callable, descriptions: dict[str, str]) -> Callable:
    """Add an Args: section to `fn`'s docstring: Prefect shows it as each
    parameter's description in the UI's form and the deployment's schema."""
    lines = [f"    {name}: {text}" for name, text in descriptions.items()]
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn


# When this process reached each step of its start-up (time.time()), for
# the report's start-up breakdown: "checked" (the command's own checks and
# Prefect's import), "imported" (the flow's modules), "server ready".
startup_marks: dict[str, float] = {}


def start_up_breakdown(started: float) -> dict[str, float]:
    """Seconds from `started` (the process's start) to each step of the
    start-up this process has reached, the flow's start last."""
    names = {"checked": "checks done, Prefect imported", "imported": "flow's modules imported",
             "server ready": "Prefect server ready"}
    marks = {names[name]: at for name, at in startup_marks.items()}
    marks["flow started, first task next"] = time.time()
    return {name: round(at - started, 2) for name, at in marks.items()}


def run_flow_command(launch: Callable[[], dict], summary: Callable[[dict], str], *,
                     before: Callable[[], None] | None = None, hint: str = RESUME_HINT,
                     while_server_starts: Callable[[], object] | None = None, start_server_early: bool = False) -> int:
    """Exit code of a command line that runs one flow: `before` checks what
    can be checked before Prefect starts, `launch` runs the flow under the
    temporary server (or PREFECT_API_URL's), `summary` says what it did. A
    PipelineError is printed as one `error:` line, never a traceback (any
    other exception is a bug and keeps its traceback); a signal stops it
    cleanly (`hint` says how to go on). `while_server_starts` imports the
    flow's modules (torch, ...) while the temporary server boots in its own
    process; the command's module imports only what its checks need, so that
    --help and a refusal answer at once. `start_server_early` (a command run
    as a script): the server starts before Prefect is imported, once the
    checks have passed (prefect_server.start_early)."""
    tasks.command_line_reports_errors()  # printed once, as the error: line below
    startup_marks.clear()

    def imports() -> None:
        if while_server_starts is not None:
            while_server_starts()
        startup_marks["imported"] = time.time()

    with exit_on_signals(hint):
        try:
            if before is not None:
                before()
            early = start_early() if start_server_early else None
            try:
                check_result_storage()  # imports Prefect's settings, i.e. Prefect
            except BaseException:
                if early is not None:
                    early.abandon()
                raise
            startup_marks["checked"] = time.time()
            with prefect_server(while_starting=imports, early=early):
                startup_marks["server ready"] = time.time()
                result = launch()
        except PipelineError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return exc.exit_code
    warn_unsaved_results()
    print(summary(result))
    return 0
