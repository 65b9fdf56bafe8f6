"""What the three command lines (flows/full_run.py, evaluate.py, sweep.py)
share: flags generated from the config's fields, and one way of running a
flow that turns a user's error into an `error:` line and an exit code."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal

import tasks
from alexnet_pipeline.config import RUN_OPTIONS, RunOption, base_type
from alexnet_pipeline.errors import PipelineError
from flows.interrupt import RESUME_HINT, exit_on_signals
from flows.prefect_server import check_result_storage, prefect_server, warn_unsaved_results


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


def run_flow_command(launch: Callable[[], dict], summary: Callable[[dict], str], *,
                     before: Callable[[], None] | None = None, hint: str = RESUME_HINT,
                     also_failures: tuple[type[Exception], ...] = ()) -> int:
    """Exit code of a command line that runs one flow: `before` checks what
    can be checked before Prefect starts, `launch` runs the flow under the
    temporary server (or PREFECT_API_URL's), `summary` says what it did. A
    PipelineError (or one of `also_failures`, exit code 1) is printed as one
    `error:` line, never a traceback; a signal stops it cleanly (`hint`
    says how to go on)."""
    tasks.command_line_reports_errors()  # printed once, as the error: line below
    with exit_on_signals(hint):
        try:
            if before is not None:
                before()
            check_result_storage()
            with prefect_server():
                result = launch()
        except PipelineError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return exc.exit_code
        except also_failures as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
    warn_unsaved_results()
    print(summary(result))
    return 0
