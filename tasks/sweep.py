"""The sweep's tasks: start one trial on the work pool and wait for its row
of the table (run_trial), write sweep.csv and the figures (write_sweep_report)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from alexnet_pipeline.escape import markdown_code
from alexnet_pipeline.files import atomic_path, atomic_write_text
from alexnet_pipeline.report import CSV_FLOAT_FORMAT
from alexnet_pipeline.sweep import (
    accuracy_curve,
    classes_of_run,
    run_summary,
    seed_band_figure,
    seed_groups,
    seed_summary,
    sweep_figure,
    sweep_table,
    trial_label,
)


# Never cached: a trial is a request to the work pool, and its outcome lives in
# the flow run it starts. The idempotency key stops a retried sweep run from
# launching the same trial twice.
@task(name="run-trial", task_run_name="trial-{index}", cache_policy=NO_CACHE)
def run_trial(deployment: str, index: int, params: dict, timeout_s: float | None, poll_interval_s: float,
              run_name: str, idempotency_key: str) -> dict:
    """Start one run of `deployment` on whichever worker is free, wait for it,
    and return its row of the sweep table (failures included, never raised)."""
    logger = get_run_logger()
    try:
        flow_run = run_deployment(deployment, parameters=params, timeout=timeout_s, poll_interval=poll_interval_s,
                                  flow_run_name=run_name, idempotency_key=idempotency_key)
    except Exception as exc:  # noqa: BLE001 - no such deployment, server gone: the trial failed, the sweep goes on
        row = {**not_started_row(index, params), "error": f"{type(exc).__name__}: {exc}"}
        # No such deployment, no server: the user's to fix, one line. Anything else is a bug: its traceback too.
        logger.error("trial %d could not be started: %s", index, row["error"],
                     exc_info=not isinstance(exc, (ObjectNotFound, httpx.HTTPError)))
        return row
    return trial_row(index, params, flow_run, timeout_s, logger)


def not_started_row(index: int, params: dict) -> dict:
    return {"trial": index, "params": params, "run_dir": params["out"], "state": "NotStarted", "error": ""}


def trial_row(index: int, params: dict, flow_run, timeout_s: float | None, logger) -> dict:
    """The sweep table's row of a trial from its flow run (a deployment's run
    on a worker, or a subflow run here): state, times, and the results its
    run folder's accuracy.csv holds when it completed."""
    row = not_started_row(index, params)
    state = flow_run.state
    row.update(state=state.name if state else "Unknown", flow_run_id=str(flow_run.id), flow_run_name=flow_run.name)
    if flow_run.start_time:
        row["started_at"] = flow_run.start_time.isoformat()
    if flow_run.end_time:
        row["ended_at"] = flow_run.end_time.isoformat()
    if flow_run.start_time and flow_run.end_time:
        row["wall_seconds"] = round((flow_run.end_time - flow_run.start_time).total_seconds(), 1)
    if state is None or not state.is_completed():
        final = state is not None and state.is_final()
        row["error"] = (state.message if final and state.message else
                        f"not finished after {timeout_s} s (still {row['state']}); it may yet complete")
        logger.error("trial %d (%s): %s", index, row["state"], row["error"])
        return row
    try:
        row.update(run_summary(accuracy_curve(params["out"])))
    except (OSError, ValueError, KeyError) as exc:
        row.update(state="NoReport", error=f"{type(exc).__name__}: {exc}")
        return row
    logger.info("trial %d: selected epoch %d on %s (validation %.2f%%), test %.2f%%, final %.2f%%, %s s",
                index, row["best_epoch"], row["selected_on"], row["best_val_acc"] * 100, row["best_test_acc"] * 100,
                row["final_test_acc"] * 100, row.get("wall_seconds"))
    return row


@task(name="write-sweep-report", cache_policy=NO_CACHE)
def write_sweep_report(sweep_dir: str, rows: list[dict], keys: list[str], label_keys: list[str]) -> dict[str, str]:
    out = Path(sweep_dir)
    table = sweep_table(rows, keys)
    curves = {f"{row['trial']}: {trial_label(row['params'], label_keys)}": accuracy_curve(row["run_dir"])
              for row in rows if row["state"] == "Completed"}
    atomic_write_text(out / "sweep.csv", table.to_csv(index=False, float_format=CSV_FLOAT_FORMAT))
    paths = {"sweep.csv": str(out / "sweep.csv"), "sweep.png": str(out / "sweep.png")}
    # Trials that differ only by seed: their spread is what tells whether a
    # difference between settings means anything.
    groups = seed_groups(rows, label_keys)
    # Chance is drawn as in each trial's own figure (trials of one sweep share the data).
    num_classes = next((n for row in rows if row["state"] == "Completed" and (n := classes_of_run(row["run_dir"]))), None)
    if groups:
        seeds = seed_summary(groups)
        atomic_write_text(out / "sweep_seeds.csv", seeds.to_csv(index=False, float_format=CSV_FLOAT_FORMAT))
        paths["sweep_seeds.csv"] = str(out / "sweep_seeds.csv")
        fig = seed_band_figure({label: [accuracy_curve(m["run_dir"]) for m in members]
                                for label, members in groups.items()}, num_classes)
    else:
        fig = sweep_figure(curves, num_classes)
    with atomic_path(out / "sweep.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    create_table_artifact(table.astype(object).fillna("").to_dict(orient="records"), key="sweep-results",
                          description=f"{markdown_code(sweep_dir)}: one row per trial")
    get_run_logger().info("sweep results: %s", ", ".join(paths.values()))
    return paths
