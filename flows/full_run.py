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
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import tasks  # noqa: F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from alexnet_pipeline.cache import read_meta
from alexnet_pipeline.config import RUN_OPTIONS, PipelineConfig, Text, absolute_path, preset_names, resolve_run
from alexnet_pipeline.lock import check_not_locked, run_folder_lock
from alexnet_pipeline.ownership import RunIdentity
from alexnet_pipeline.preflight import check_inputs, cpu_training_warning, few_steps_warning
from alexnet_pipeline.timing import StageTimer
from flows.command_line import add_run_flags, describe_parameters, run_flow_command
from flows.interrupt import keep_signals_in_flow
from tasks import preprocess, report, train
from tasks.caching import call_cached
from tasks.evaluate import evaluate_checkpoint_task

PRESET_HELP = "recipe to start from, a file in alexnet_pipeline/presets/"
CONFIG_FILE_HELP = "YAML file with data/model/train sections"

# One resolved config per set of parameters, per process: main() checks it
# before Prefect starts and the flow run it launches uses the same object.
# A config file's size and modification time are part of the key.
_resolved: dict[str, PipelineConfig] = {}


def config_for(preset: str, config_file: str | None, **settings: Any) -> PipelineConfig:
    stat = None
    if config_file is not None:
        try:
            st = Path(config_file).stat()
            stat = [st.st_size, st.st_mtime_ns, st.st_ino]
        except (OSError, ValueError):
            pass  # resolve_run says what is wrong with it
    key = json.dumps([preset, config_file, stat, settings], sort_keys=True, default=repr)
    if key not in _resolved:
        _resolved.clear()  # one entry: the command's
        _resolved[key] = resolve_run(preset, config_file, **settings)
    return _resolved[key]


def _run_settings_as_parameters(fn):
    """Give `fn(preset, config_file, **settings)` one keyword parameter per
    run setting (alexnet_pipeline.config.RUN_OPTIONS), typed with the field's
    type and bounds and described by its description. Prefect builds the
    flow's parameter schema from this signature: the UI's form, and a
    deployment run's --param epochs=0 is refused before the run starts.
    None (the default): not given, the preset's or the file's value holds."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("preset", keyword, annotation=str, default="default"),
                  inspect.Parameter("config_file", keyword, annotation=Text | None, default=None)]
    parameters += [inspect.Parameter(name, keyword, annotation=option.value_type | None, default=None)
                   for name, option in RUN_OPTIONS.items()]
    fn.__signature__ = inspect.Signature(parameters, return_annotation=dict)
    return describe_parameters(fn, {"preset": PRESET_HELP, "config_file": CONFIG_FILE_HELP,
                                    **{name: option.description for name, option in RUN_OPTIONS.items()}})


# Two evaluation threads: one can load a checkpoint while the other computes;
# more would only compete for the same GPU (or the CPU's cores).
@flow(name="full-run", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
@_run_settings_as_parameters
def full_run(*, preset: str = "default", config_file: str | None = None, **settings: Any) -> dict:
    """Fine-tune AlexNet and report test accuracy per epoch; returns the run
    folder, the best and final accuracy and the report's file paths.
    `settings`: the run settings by name (epochs=3, lr=1e-4, ...; see
    alexnet_pipeline.config.RUN_OPTIONS), each a typed flow parameter."""
    keep_signals_in_flow()
    cfg = config_for(preset, config_file, **{k: v for k, v in settings.items() if v is not None})
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
            history = call_cached(train.fine_tune, train.still_valid, config=cfg, dataset_dir=dataset_dir,
                                  run_dir=run_dir, config_fingerprint=cfg.fingerprint())
        with timer.stage("evaluate"):
            evaluations = evaluate_checkpoint_task.map(
                [h["checkpoint"] for h in history], dataset_dir=unmapped(dataset_dir),
                device=unmapped(cfg.train.device), subset=unmapped(cfg.data.subset),
                batch_size=unmapped(cfg.train.eval_batch_size),
            ).result()
        return report.report_run(run_dir, history, evaluations, meta, cfg.to_dict(), cfg.train.device, timer)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=preset_names(), help=f"{PRESET_HELP} (default: default)")
    p.add_argument("--config", dest="config_file", metavar="FILE", type=absolute_path, help=CONFIG_FILE_HELP)
    add_run_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    preset, config_file = args.pop("preset"), args.pop("config_file")
    settings = {k: v for k, v in args.items() if v is not None}

    def check_before_prefect_starts() -> None:
        # Everything that can be checked cheaply is checked before Prefect starts.
        cfg = config_for(preset, config_file, **settings)
        train_images = check_inputs(cfg)
        for warning in (few_steps_warning(cfg.train, train_images), cpu_training_warning(cfg, train_images)):
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        if cfg.out:  # a default run folder is known only once the data are hashed
            check_not_locked(cfg.run_dir())

    return run_flow_command(
        lambda: full_run(preset=preset, config_file=config_file, **settings),
        lambda result: (f"\nbest test accuracy {result['best_test_acc'] * 100:.2f}% (epoch {result['best_epoch']}), "
                        f"final {result['final_test_acc'] * 100:.2f}%\nreport: {Path(result['report.md'])}"),
        before=check_before_prefect_starts,
    )


if __name__ == "__main__":
    sys.exit(main())
