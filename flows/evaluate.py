"""Evaluate every checkpoint of an existing run folder and regenerate its
report (accuracy.csv, accuracy.png, confusion.png, report.md). It needs only
the folder: each checkpoint carries its config, which says where the data is.

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
import sys
from functools import partial
from pathlib import Path

import tasks  # noqa: F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from alexnet_pipeline.cache import read_meta
from alexnet_pipeline.config import RUN_OPTIONS, Text, absolute_path, config_from_dict, runs_root
from alexnet_pipeline.download import check_cifar10_reachable
from alexnet_pipeline.errors import ConfigError, DataError
from alexnet_pipeline.lock import run_folder_lock
from alexnet_pipeline.ownership import RunIdentity
from alexnet_pipeline.run_folder import latest_run_dir, run_checkpoints
from alexnet_pipeline.timing import StageTimer
from flows.command_line import add_run_flags, describe_parameters, run_flow_command
from flows.interrupt import keep_signals_in_flow
from tasks import preprocess, report
from tasks.checkpoint_info import describe_checkpoint
from tasks.evaluate import evaluate_checkpoint_task


def local_config(config: dict, data_dir: str | None, cache_dir: str | None, device: str | None) -> dict:
    """The training config, with where the data is and which device to use
    on this machine (none of which changes the results)."""
    local = copy.deepcopy(config)
    for section, key, value in (("data", "data_dir", data_dir), ("data", "cache_dir", cache_dir), ("train", "device", device)):
        if value is not None:
            local[section][key] = value
    return local


# Where the data is and which device to use on this machine: the run
# settings of the same names, their types (so Prefect checks them) and these words.
LOCAL_HELP = {
    "run_dir": "run folder (default: the newest under $ALEXNET_PIPELINE_RUNS_ROOT or runs/)",
    "data_dir": "where the dataset is on this machine, if not where it was trained",
    "cache_dir": "where preprocessed arrays are cached on this machine",
    "device": "device to evaluate on (default: the one the run trained with)",
}
DataDir, CacheDir, Device = (RUN_OPTIONS[name].value_type for name in ("data_dir", "cache_dir", "device"))


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
        # The paths recorded at training time may be another machine's; these are this one's.
        history = [{**d["train_stats"], "checkpoint": path} for d, path in zip(described, checkpoints, strict=True)]
        # This invocation trained nothing: the report keeps the training time
        # the checkpoints recorded, beside this invocation's own stages.
        timer.seconds["train (recorded in the checkpoints)"] = round(sum(h["epoch_seconds"] for h in history), 3)
        summary = report.report_run(str(run_path), history, evaluations, read_meta(dataset_dir), config,
                                    cfg.train.device, timer)
    return {**summary, "epochs": len(checkpoints)}


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", type=absolute_path, help=LOCAL_HELP["run_dir"])
    add_run_flags(p, ["data_dir", "cache_dir", "device"], help=LOCAL_HELP)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))

    def check_before_prefect_starts() -> None:
        if args["run_dir"]:  # a wrong folder is reported before Prefect starts
            run_checkpoints(args["run_dir"])

    return run_flow_command(
        lambda: evaluate_latest(**args),
        lambda result: (f"\n{result['epochs']} checkpoints: best test accuracy {result['best_test_acc'] * 100:.2f}% "
                        f"(epoch {result['best_epoch']}), final {result['final_test_acc'] * 100:.2f}%\n"
                        f"report: {result['report.md']}"),
        before=check_before_prefect_starts, hint="run the same command again",
    )


if __name__ == "__main__":
    sys.exit(main())
