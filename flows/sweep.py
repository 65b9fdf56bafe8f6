"""A hyperparameter sweep: every trial is its own flow run of full_run, on a
server's workers (a run of the full_run deployment, on whichever worker of the
work pool is free: one worker per GPU) or, without a server, here. Waits for
all, then writes sweep.csv and sweep.png.

    python flows/sweep.py --set preset=smoke --grid lr=1e-4,3e-4 --grid seed=0,1
    python flows/sweep.py --file sweep.yaml        # keys: trials, grid, base, out

With PREFECT_API_URL naming a Prefect server that has the deployments of
deployments/prefect.yaml and workers (docs/operations.md, "Run on several GPU
machines"), the trials run there, concurrently. Without it, on one machine:
the trials run here, one after another, each a flow run of full_run under the
sweep's (same folders, same sweep.csv, same resume).
"""

from __future__ import annotations

if __name__ == "__main__":  # a signal during the imports below (seconds) ends the run cleanly too
    from flows.interrupt import install

    install()

import argparse  # noqa: E402
import importlib
import sys
from pathlib import Path

# Light imports only above the flow below: --help and a refusal answer at once.
from alexnet_pipeline.config import RUN_OPTIONS, absolute_path, load_yaml
from alexnet_pipeline.errors import ConfigError, PipelineError
from flows.command_line import run_flow_command

TRIAL_DEPLOYMENT = "full-run/on-demand"
# What a trial may set: full_run's parameters, which follow from the config's run settings.
FULL_RUN_PARAMETERS = ["preset", "config_file", *RUN_OPTIONS]


def _value(key: str, text: str):
    """Command-line value, read as the type of the run setting `key` (so
    `--set data_dir=2024` stays a folder name, made absolute, `--set lr=1e-4` is a number).
    preset and config_file are names; an unknown key is refused by
    check_trial with its text as given."""
    return RUN_OPTIONS[key].parse(text) if key in RUN_OPTIONS else text


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", metavar="YAML", type=absolute_path, help="trials, grid, base and out, as YAML")
    p.add_argument("--grid", action="append", type=_key_value, default=[], metavar="KEY=V1,V2",
                   help="a full_run parameter and its values; repeat for a grid")
    p.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="a full_run parameter shared by every trial")
    p.add_argument("--out", metavar="DIR", type=absolute_path, help="sweep folder (default: <runs root>/sweeps/sweep-<id>)")
    p.add_argument("--deployment", help=f"deployment each trial runs on a server's workers (default: {TRIAL_DEPLOYMENT}; "
                                        "without PREFECT_API_URL the trials run here, one after another)")
    p.add_argument("--trial-timeout", type=float, metavar="SECONDS", help="give up waiting on a trial after this long")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    request: dict = {}

    def read_request() -> None:
        spec = load_yaml(Path(args.file)) if args.file else {}
        unknown = sorted(set(spec) - {"trials", "grid", "base", "out"})
        if unknown:
            raise ConfigError(f"{args.file}: unknown key {unknown[0]!r}; use trials, grid, base, out")
        from prefect.settings import PREFECT_API_URL  # all of Prefect (seconds): not for --help

        if not PREFECT_API_URL.value() and args.deployment:
            raise ConfigError(f"--deployment {args.deployment}: a deployment runs on a Prefect server's workers; "
                              "set PREFECT_API_URL (see docs/operations.md, \"Run on several GPU machines\"), "
                              "or leave --deployment out to run the trials here, one after another")
        # No server named: this machine runs the trials itself, under the temporary server.
        deployment = (args.deployment or TRIAL_DEPLOYMENT) if PREFECT_API_URL.value() else None
        if deployment is None:
            from flows import interrupt

            interrupt.set_hint("run the same command again: finished trials are reused and the stopped one "
                               "resumes after its last complete epoch")
        grid = {**(spec.get("grid") or {}), **{k: [_value(k, v) for v in values.split(",")] for k, values in args.grid}}
        base = {**(spec.get("base") or {}), **{k: _value(k, v) for k, v in args.set}}
        request.update(trials=spec.get("trials"), grid=grid or None, base=base or None,
                       out=args.out or spec.get("out"), deployment=deployment, trial_timeout_s=args.trial_timeout)

    def summary(result: dict) -> str:
        reports = ", ".join(result[name] for name in ("sweep.csv", "sweep_seeds.csv", "sweep.png") if name in result)
        return f"\n{len(result['trials']) - result['failed']} of {len(result['trials'])} trials completed\nreport: {reports}"

    # On workers, a stopped sweep leaves the trials already started running
    # there (trials run here: read_request says so instead).
    return run_flow_command(
        lambda: _flow_module().sweep(**request), summary, before=read_request, while_server_starts=_flow_module,
        hint="trials already started go on on their workers; run the same command again "
             "once they have ended, and finished trials are reused",
    )


def _flow_module():
    """This file with its flow: run as a script, it is __main__ and stops
    before the flow's imports (Prefect, pandas); importing it by name runs it
    once more, whole."""
    return importlib.import_module("flows.sweep")


# Run as a script, this file stops here: main() imports the flow below only
# once the checks have passed.
if __name__ == "__main__":
    sys.exit(main())


import tasks  # noqa: E402, F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from alexnet_pipeline.config import resolve_run, runs_root  # noqa: E402
from alexnet_pipeline.ownership import claim_sweep_folder  # noqa: E402
from alexnet_pipeline.sweep import (  # noqa: E402
    default_sweep_dir,
    expand_trials,
    param_keys,
    varying_keys,
    with_absolute_paths,
)
from flows.interrupt import keep_signals_in_flow  # noqa: E402
from tasks.sweep import run_trial, trial_row, write_sweep_report  # noqa: E402


def check_trial(index: int, params: dict) -> None:
    """Reject a bad trial before any is launched, naming it. The device is
    checked where the trial runs: this machine may have no GPU."""
    unknown = sorted(set(params) - set(FULL_RUN_PARAMETERS))
    if unknown:
        raise ConfigError(f"trial {index}: unknown parameter {unknown[0]!r}; "
                          f"full_run takes {', '.join(sorted(FULL_RUN_PARAMETERS))}")
    rest = {k: v for k, v in params.items() if k not in ("preset", "config_file") and v is not None}
    try:
        resolve_run(params.get("preset", "default"), params.get("config_file"), **{**rest, "device": "cpu"})
    except ConfigError as exc:
        raise ConfigError(f"trial {index}: {exc}") from None


# The threads only wait on flow runs that execute elsewhere, so there is one
# per trial (up to 64) rather than one per core.
@flow(name="sweep", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=64))
def sweep(
    trials: list[dict] | None = None,
    grid: dict[str, list] | None = None,
    base: dict | None = None,
    out: str | None = None,
    deployment: str | None = TRIAL_DEPLOYMENT,
    trial_timeout_s: float | None = None,
    poll_interval_s: float = 10.0,
) -> dict:
    """Run every trial (explicit `trials`, then the combinations of `grid`,
    each on top of `base`) as a run of `deployment`, concurrently, or with
    `deployment` None in this process, one after another, each a subflow
    run of full_run; compare them.
    Returns the sweep folder, the paths of sweep.csv and sweep.png, and the rows."""
    keep_signals_in_flow()
    planned = [with_absolute_paths(params) for params in expand_trials(trials, grid, base)]
    for index, params in enumerate(planned, start=1):
        check_trial(index, params)
    # Absolute, because the trials write there from other machines: a shared
    # filesystem mounted at the same path everywhere (docs/operations.md, "Run on several GPU machines").
    sweep_dir = (Path(out).expanduser() if out else default_sweep_dir(runs_root(), planned)).resolve()
    claim_sweep_folder(sweep_dir)  # before any trial starts: never into a folder that is not a sweep's
    launched = [{**params, "out": params.get("out") or str(sweep_dir / f"trial-{index:02d}")}
                for index, params in enumerate(planned, start=1)]
    if deployment is None:
        rows = [run_trial_here(index, params, f"{flow_run.get_name()}-trial-{index:02d}")
                for index, params in enumerate(launched, start=1)]
    else:
        futures = [
            run_trial.submit(deployment, index, params, trial_timeout_s, poll_interval_s,
                             run_name=f"{flow_run.get_name()}-trial-{index:02d}",
                             idempotency_key=f"{flow_run.get_id()}-trial-{index}")
            for index, params in enumerate(launched, start=1)
        ]
        rows = [future.result() for future in futures]
    paths = write_sweep_report(str(sweep_dir), rows, param_keys(planned), varying_keys(planned))
    failed = [row for row in rows if row["state"] != "Completed"]
    if len(failed) == len(rows):
        # The user's to look into (deployment, workers, settings), as any PipelineError: one line.
        raise PipelineError(f"all {len(rows)} trials failed; see {paths['sweep.csv']} (first error: {failed[0]['error']})")
    return {"sweep_dir": str(sweep_dir), **paths, "failed": len(failed), "trials": rows}


def run_trial_here(index: int, params: dict, run_name: str) -> dict:
    """One trial in this process: a subflow run of full_run (its own flow
    run, state and logs, as on a worker), and its row of the sweep table
    (failures included, never raised)."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client

    from flows.full_run import full_run  # here: a sweep on workers never imports the training flow

    state = full_run.with_options(flow_run_name=run_name)(**params, return_state=True)
    with get_client(sync_client=True) as client:
        trial_run = client.read_flow_run(state.state_details.flow_run_id)
    return trial_row(index, params, trial_run, None, get_run_logger())
