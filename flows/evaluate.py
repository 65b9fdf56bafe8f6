"""Evaluate every checkpoint of an existing run folder and regenerate its
report (accuracy.csv, accuracy.png, confusion.png, report.md). It needs only
the folder: each checkpoint carries its config, which says where the data is.
Epochs whose checkpoints are gone (pruned by train.keep_checkpoints, or
deleted) keep the numbers the run record (record.json) holds, marked
"recorded": the report never loses an epoch.

    python flows/evaluate.py runs/cifar10-none-e2-0123456789
    python flows/evaluate.py                   # the run trained most recently
    python flows/evaluate.py RUN_DIR --data-dir /mnt/data --device cuda   # data elsewhere on this host

Evaluations are cached by checkpoint content: only new or changed checkpoints
are evaluated again.
"""

from __future__ import annotations

if __name__ == "__main__":  # a signal during the imports below (seconds) ends the run cleanly too
    from flows.interrupt import install

    install("run the same command again")

import argparse  # noqa: E402
import copy
import importlib
import sys
from functools import partial
from pathlib import Path

# Light imports only above the flow below: --help and a refusal answer at once.
from alexnet_pipeline.config import RUN_OPTIONS, absolute_path
from flows.command_line import add_run_flags, run_flow_command

# Where the data is and which device to use on this machine: the run
# settings of the same names, their types (so Prefect checks them) and these words.
LOCAL_HELP = {
    "run_dir": "run folder (default: the newest under $ALEXNET_PIPELINE_RUNS_ROOT or runs/)",
    "data_dir": "where the dataset is on this machine, if not where it was trained",
    "cache_dir": "where preprocessed arrays are cached on this machine",
    "device": "device to evaluate on (default: the one the run trained with)",
}
DataDir, CacheDir, Device = (RUN_OPTIONS[name].value_type for name in ("data_dir", "cache_dir", "device"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", type=absolute_path, help=LOCAL_HELP["run_dir"])
    add_run_flags(p, ["data_dir", "cache_dir", "device"], help=LOCAL_HELP)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))

    def check_before_prefect_starts() -> None:
        from alexnet_pipeline.run_folder import run_checkpoints

        if args["run_dir"]:  # a wrong folder is reported before Prefect starts
            run_checkpoints(args["run_dir"])

    return run_flow_command(
        lambda: _flow_module().evaluate_latest(**args),
        lambda result: (f"\n{result['evaluated']} checkpoints evaluated, {result['epochs']} epochs reported: "
                        f"{result['headline']}\nreport: {result['report.md']}"),
        before=check_before_prefect_starts, hint="run the same command again", while_server_starts=_flow_module,
        start_server_early=__name__ == "__main__",
    )


def _flow_module():
    """This file with its flow: run as a script, it is __main__ and stops
    before the flow's imports (torch, Prefect); importing it by name runs it
    once more, whole."""
    return importlib.import_module("flows.evaluate")


# Run as a script, this file stops here: main() imports the flow below only
# once the checks have passed, and while the temporary server starts.
if __name__ == "__main__":
    sys.exit(main())

import tasks  # noqa: E402, F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow, unmapped  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from alexnet_pipeline.cache import read_meta  # noqa: E402
from alexnet_pipeline.config import Text, config_from_dict, runs_root  # noqa: E402
from alexnet_pipeline.download import check_cifar10_reachable  # noqa: E402
from alexnet_pipeline.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from alexnet_pipeline.integrity import sha256_file  # noqa: E402
from alexnet_pipeline.lock import run_folder_lock  # noqa: E402
from alexnet_pipeline.ownership import RunIdentity  # noqa: E402
from alexnet_pipeline.record import RunRecord, row_of, select_epoch, uses_validation  # noqa: E402
from alexnet_pipeline.run_folder import latest_run_dir, run_checkpoints  # noqa: E402
from alexnet_pipeline.timing import StageTimer  # noqa: E402
from flows.command_line import describe_parameters  # noqa: E402
from flows.interrupt import keep_signals_in_flow  # noqa: E402
from tasks import preprocess, report  # noqa: E402
from tasks.checkpoint_info import describe_checkpoint  # noqa: E402
from tasks.evaluate import evaluate_checkpoint_task  # noqa: E402


def local_config(config: dict, data_dir: str | None, cache_dir: str | None, device: str | None) -> dict:
    """The training config, with where the data is and which device to use
    on this machine (none of which changes the results)."""
    local = copy.deepcopy(config)
    for section, key, value in (("data", "data_dir", data_dir), ("data", "cache_dir", cache_dir), ("train", "device", device)):
        if value is not None:
            local[section][key] = value
    return local


@flow(name="evaluate-latest", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
@partial(describe_parameters, descriptions=LOCAL_HELP)
def evaluate_latest(
    run_dir: Text | None = None,
    data_dir: DataDir | None = None,
    cache_dir: CacheDir | None = None,
    device: Device | None = None,
) -> dict:
    """Evaluate the checkpoints of `run_dir` (default: the newest run under the
    runs root) and rewrite its report; returns the best and final accuracy and
    the report's file paths."""
    keep_signals_in_flow()
    run_path = (Path(run_dir).expanduser() if run_dir else latest_run_dir(runs_root())).resolve()
    checkpoints = [str(p) for p in run_checkpoints(run_path)]
    timer = StageTimer()
    with timer.stage("read checkpoints"):
        described = describe_checkpoint.map(checkpoints).result()
    config = described[-1]["config"]
    cfg = config_from_dict(local_config(config, data_dir, cache_dir, device))
    if data_dir is None:
        check_recorded_data_folder(cfg, run_path)
    dataset_dir = preprocess.prepared_dataset(cfg, timer)
    trained_on = described[-1].get("dataset_key")
    if trained_on and read_meta(dataset_dir)["key"] != trained_on:
        # The run's report describes the run: scored on other images it would
        # silently describe something else.
        raise ConfigError(
            f"the data in {cfg.data.data_dir} is not what {run_path} was trained on (its content differs); "
            "evaluate-latest rewrites that run's own report, so point --data-dir at the training data "
            "(a copy anywhere is fine). To score a checkpoint on other images, use "
            "alexnet_pipeline.evaluate.evaluate_checkpoint."
        )
    # The report is rewritten: not while a training run is writing this folder, and only in a run folder
    # (one from before run markers is taken over if its checkpoints agree).
    with run_folder_lock(run_path, RunIdentity.from_record(described[-1])):
        with timer.stage("evaluate"):
            evaluations = evaluate_checkpoint_task.map(
                checkpoints, dataset_dir=unmapped(dataset_dir), device=unmapped(cfg.train.device),
                subset=unmapped(cfg.data.subset), batch_size=unmapped(cfg.train.eval_batch_size),
            ).result()
        scored = {int(d["epoch"]): row_of({**d["train_stats"], "checkpoint_sha256": sha256_file(path)}, scores)
                  for d, path, scores in zip(described, checkpoints, evaluations, strict=True)}
        results = {int(d["epoch"]): scores["test"] for d, scores in zip(described, evaluations, strict=True)}
        summary = merged_with_record(RunRecord.load(run_path), scored, results)
        # This invocation trained nothing: the report keeps the training time
        # the run recorded, beside this invocation's own stages.
        timer.seconds["train (recorded)"] = round(sum(r["epoch_seconds"] for r in summary["rows"]), 3)
        result = report.report_run(str(run_path), summary, read_meta(dataset_dir), config, cfg.train.device, timer)
    return {**result, "epochs": len(summary["rows"]), "evaluated": len(scored)}


def merged_with_record(record: RunRecord | None, scored: dict[int, dict], results: dict[int, dict]) -> dict:
    """The report's rows: each checkpoint scored now, and every other epoch
    the run record holds (its checkpoint pruned or deleted), marked
    "recorded", so the history never shrinks. The selected epoch is chosen
    over all of them."""
    rows = {**{int(r["epoch"]): {**r, "evaluated": "recorded"} for r in (record.rows if record else [])},
            **{epoch: {**row, "evaluated": "now"} for epoch, row in scored.items()}}
    rows = [rows[epoch] for epoch in sorted(rows)]
    selected = select_epoch(rows)
    best = results.get(selected) or (record.results.get(selected) if record else None)
    if best is None:
        raise CheckpointError(f"the selected epoch {selected} has neither a checkpoint nor a recorded test result; "
                              "run the training command again to redo it")
    return {"rows": rows, "selected_epoch": selected, "selected_on": "validation" if uses_validation(rows) else "test",
            "selected_result": best}


def check_recorded_data_folder(cfg, run_path: Path) -> None:
    """The data folder the run recorded no longer holds CIFAR-10 and it
    cannot be downloaded there: the way out is --data-dir, not the offline
    download advice (the data was there once; most likely it moved)."""
    if cfg.data.dataset != "cifar10":
        return  # an image folder that moved is reported by its scan, which names --data-dir
    try:
        check_cifar10_reachable(cfg.data.data_dir, cfg.data.url)
    except DataError as exc:
        raise DataError(
            f"{run_path} was trained on the CIFAR-10 data in {cfg.data.data_dir}, which no longer holds it: "
            f"if the data moved, pass its new folder (python flows/evaluate.py {run_path} --data-dir NEW_FOLDER). "
            f"Downloading it again there failed too: {exc}"
        ) from None
