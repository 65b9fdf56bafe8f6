"""The whole job: download -> preprocess -> fine-tune -> evaluate every
checkpoint -> report. Re-running the same command resumes where it stopped.

    python flows/full_run.py                          # CIFAR-10, ImageNet weights, 30 epochs
    python flows/full_run.py --preset smoke           # a 1-2 minute demo on the CPU
    python flows/full_run.py --dataset imagefolder --data-dir ~/photos --weights none --epochs 10

Runs on Prefect's temporary local server unless PREFECT_API_URL names one.
"""

from __future__ import annotations

import time

# Taken before the heavy imports: the report's "start-up" stage counts them
# and Prefect's temporary server start from here.
_PROCESS_STARTED = time.time()

if __name__ == "__main__":  # a signal during the imports below (seconds) ends the run cleanly too
    from flows.interrupt import install

    install()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path
from typing import Any

import tasks  # first: sets Prefect's environment defaults before prefect is imported
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from alexnet_pipeline.cache import read_meta
from alexnet_pipeline.config import PipelineConfig, preset_names, resolve_config
from alexnet_pipeline.errors import PipelineError
from alexnet_pipeline.lock import check_not_locked, run_folder_lock
from alexnet_pipeline.ownership import RunIdentity
from alexnet_pipeline.preflight import check_inputs, cpu_training_warning
from alexnet_pipeline.report import environment, measurements
from alexnet_pipeline.timing import StageTimer
from flows.interrupt import exit_on_signals, keep_signals_in_flow
from flows.prefect_server import check_result_storage, prefect_server, warn_unsaved_results
from tasks import preprocess, report, train
from tasks.caching import call_cached
from tasks.evaluate import evaluate_checkpoint_task

# Flow parameter -> dotted config field. The command line uses the same names.
OVERRIDES = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "verify": "data.verify",
    "subset": "data.subset",
    "skip_bad_images": "data.skip_bad_images",
    "cache_dir": "data.cache_dir",
    "weights": "model.weights",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "image_size": "train.image_size",
    "device": "train.device",
    "seed": "train.seed",
    "out": "out",
}


def config_for(preset: str, config_file: str | None, **params: Any) -> PipelineConfig:
    return resolve_config(preset, config_file, {OVERRIDES[k]: v for k, v in params.items()})


# Two evaluation threads: one can load a checkpoint while the other computes;
# more would only compete for the same GPU (or the CPU's cores).
@flow(name="full-run", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def full_run(
    preset: str = "default",
    config_file: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    verify: bool | None = None,
    subset: int | None = None,
    skip_bad_images: bool | None = None,
    cache_dir: str | None = None,
    weights: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    image_size: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    out: str | None = None,
) -> dict:
    """Fine-tune AlexNet and report test accuracy per epoch; returns the run
    folder, the best and final accuracy and the report's file paths."""
    keep_signals_in_flow()
    params = {k: v for k, v in locals().items() if k in OVERRIDES}
    cfg = config_for(preset, config_file, **params)
    config = cfg.to_dict()
    timer = StageTimer()
    global _PROCESS_STARTED
    if _PROCESS_STARTED is not None:  # only the process's first flow run paid for start-up
        timer.seconds["start-up"] = round(time.time() - _PROCESS_STARTED, 3)
        _PROCESS_STARTED = None
    dataset_dir = preprocess.prepared_dataset(cfg, timer)
    meta = read_meta(dataset_dir)
    # The default run folder follows from the config and the data's content:
    # new images (a nightly retrain on a growing folder) get a new folder.
    run_dir = str(cfg.run_dir(meta["key"]).resolve())
    # One run per run folder, and only into a folder that is ours and holds this run.
    with run_folder_lock(run_dir, RunIdentity.of(cfg, meta["key"])):
        with timer.stage("train"):
            history = call_cached(train.fine_tune, train.still_valid, config=config, dataset_dir=dataset_dir,
                                  run_dir=run_dir, config_fingerprint=cfg.fingerprint())
        with timer.stage("evaluate"):
            evaluations = evaluate_checkpoint_task.map(
                [h["checkpoint"] for h in history], dataset_dir=unmapped(dataset_dir),
                device=unmapped(cfg.train.device), subset=unmapped(cfg.data.subset),
                batch_size=unmapped(cfg.train.eval_batch_size),
            ).result()
        paths = call_cached(
            report.write_report, report.still_valid, run_dir=run_dir, history=history, evaluations=evaluations,
            class_names=meta["class_names"], config=config, env=environment(cfg.train.device),
            measurements=measurements(timer.seconds, cfg.train.device), skipped_files=meta.get("skipped_files", []),
        )
    accuracies = [e["accuracy"] for e in evaluations]
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    return {"run_dir": run_dir, "best_epoch": history[best]["epoch"], "best_test_acc": accuracies[best],
            "final_test_acc": accuracies[-1], **paths}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=preset_names(), help="recipe to start from (default: default)")
    p.add_argument("--config", dest="config_file", metavar="FILE", help="YAML file with data/model/train sections")
    p.add_argument("--dataset", choices=["cifar10", "imagefolder"],
                   help="cifar10 (downloaded into --data-dir) or imagefolder (DIR/train/<class>/*, DIR/test/<class>/*); "
                        "default: cifar10")
    p.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 download folder, or the image folder (train/ and test/)")
    p.add_argument("--no-verify", dest="verify", action="store_const", const=False,
                   help="accept a CIFAR-10 archive whose MD5 differs from the official one")
    p.add_argument("--subset", type=int, metavar="N", help="at most N train and N test images, equal per class")
    p.add_argument("--skip-bad-images", action="store_const", const=True,
                   help="leave out image files that cannot be decoded (listed in the report)")
    p.add_argument("--cache-dir", metavar="DIR", help="where preprocessed arrays go (default: DATA_DIR/preprocessed)")
    p.add_argument("--weights", metavar="imagenet|none|PATH", help="starting weights (default: imagenet)")
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs, one checkpoint each (default: 30)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="training batch size; the default lr scales with it (default: 256)")
    p.add_argument("--lr", type=float, help="base learning rate (default: chosen from the weights)")
    p.add_argument("--image-size", type=int, help="model input side in pixels (default: 224)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: a CUDA GPU when there is one (default: auto)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seeds the initial weights, order, augmentation and dropout (default: 0)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<name derived from the config>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    tasks.command_line_reports_errors()  # printed once, as the error: line below
    preset, config_file = args.pop("preset"), args.pop("config_file")
    params = {k: v for k, v in args.items() if v is not None}
    with exit_on_signals():
        try:
            # Everything that can be checked cheaply is checked before Prefect starts.
            cfg = config_for(preset, config_file, **params)
            train_images = check_inputs(cfg)
            if warning := cpu_training_warning(cfg, train_images):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            if cfg.out:  # a default run folder is known only once the data are hashed
                check_not_locked(cfg.run_dir())
            check_result_storage()
            with prefect_server():
                result = full_run(preset=preset, config_file=config_file, **params)
        except PipelineError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return exc.exit_code
    warn_unsaved_results()
    print(
        f"\nbest test accuracy {result['best_test_acc'] * 100:.2f}% (epoch {result['best_epoch']}), "
        f"final {result['final_test_acc'] * 100:.2f}%\nreport: {Path(result['report.md'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
