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
from pathlib import Path

import tasks  # first: sets Prefect's environment defaults before prefect is imported
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from alexnet_pipeline.cache import read_meta
from alexnet_pipeline.config import config_from_dict, runs_root
from alexnet_pipeline.errors import ConfigError, PipelineError
from alexnet_pipeline.lock import run_folder_lock
from alexnet_pipeline.ownership import RunIdentity
from alexnet_pipeline.report import environment, measurements
from alexnet_pipeline.run_folder import latest_run_dir, run_checkpoints
from alexnet_pipeline.timing import StageTimer
from flows.interrupt import exit_on_signals, keep_signals_in_flow
from flows.prefect_server import check_result_storage, prefect_server, warn_unsaved_results
from tasks import preprocess, report
from tasks.caching import call_cached
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


@flow(name="evaluate-latest", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def evaluate_latest(
    run_dir: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    device: str | None = None,
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
        meta = read_meta(dataset_dir)
        # This invocation trained nothing: the report keeps the training time
        # the checkpoints recorded, beside this invocation's own stages.
        timer.seconds["train (recorded in the checkpoints)"] = round(sum(h["epoch_seconds"] for h in history), 3)
        paths = call_cached(
            report.write_report, report.still_valid, run_dir=str(run_path), history=history, evaluations=evaluations,
            class_names=meta["class_names"], config=config, env=environment(cfg.train.device),
            measurements=measurements(timer.seconds, cfg.train.device), skipped_files=meta.get("skipped_files", []),
        )
    accuracies = [e["accuracy"] for e in evaluations]
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    return {"run_dir": str(run_path), "epochs": len(checkpoints), "best_epoch": history[best]["epoch"],
            "best_test_acc": accuracies[best], "final_test_acc": accuracies[-1], **paths}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="run folder (default: the newest under $ALEXNET_PIPELINE_RUNS_ROOT or runs/)")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset is on this machine, if not where it was trained")
    p.add_argument("--cache-dir", metavar="DIR", help="where preprocessed arrays are cached on this machine")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="device to evaluate on (default: the one the run trained with)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    tasks.command_line_reports_errors()  # printed once, as the error: line below
    with exit_on_signals("run the same command again"):
        try:
            if args["run_dir"]:  # a wrong folder is reported before Prefect starts
                run_checkpoints(args["run_dir"])
            check_result_storage()
            with prefect_server():
                result = evaluate_latest(**args)
        except PipelineError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return exc.exit_code
    warn_unsaved_results()
    print(f"\n{result['epochs']} checkpoints: best test accuracy {result['best_test_acc'] * 100:.2f}% "
          f"(epoch {result['best_epoch']}), final {result['final_test_acc'] * 100:.2f}%\nreport: {result['report.md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
