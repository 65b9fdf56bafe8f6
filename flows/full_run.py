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
import json
import sys
from pathlib import Path
from typing import Any

# Light imports only above the flow below (no torch, Prefect, pandas or
# matplotlib): `--help` and every refusal that needs no data answer in under a second.
from alexnet_pipeline.config import PipelineConfig, absolute_path, preset_names, resolve_run
from alexnet_pipeline.lock import check_not_locked
from flows.command_line import add_run_flags, run_flow_command

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
        from alexnet_pipeline.preflight import check_inputs, cpu_training_warning, few_steps_warning  # numpy: not for --help

        train_images = check_inputs(cfg)
        if cfg.out:  # a default run folder is known only once the data are hashed
            check_not_locked(cfg.run_dir())
        # After the refusals: the CPU warning times a training step.
        for warning in (few_steps_warning(cfg.train, train_images), cpu_training_warning(cfg, train_images)):
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)

    return run_flow_command(
        lambda: _flow_module().full_run(preset=preset, config_file=config_file, **settings),
        lambda result: f"\n{result['headline']}\nreport: {Path(result['report.md'])}",
        before=check_before_prefect_starts, while_server_starts=_import_while_server_starts,
        start_server_early=__name__ == "__main__",
    )


def _import_while_server_starts() -> None:
    """What the run imports anyway, while the temporary server boots in its
    own process: the flow's module and torch, which reading the run
    folder's checkpoints needs (training, or the lock's check of what a
    finished run's folder holds)."""
    _flow_module()
    import torch  # noqa: F401


def _flow_module():
    """This file with its flow. Run as a script, this file is __main__ and
    stops before the flow's imports (torch, Prefect: seconds); importing it
    by name runs it once more as flows.full_run, which is handed what this
    copy knows: when the process started and the config already checked."""
    import flows.full_run as module

    if module is not sys.modules[__name__]:
        module._PROCESS_STARTED = _PROCESS_STARTED
        module._resolved.update(_resolved)
    return module


# Run as a script, this file stops here: main() imports the flow below only
# once the checks have passed, and while the temporary server starts.
if __name__ == "__main__":
    sys.exit(main())

import inspect  # noqa: E402

import tasks  # noqa: E402, F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow  # noqa: E402

from alexnet_pipeline.cache import read_meta  # noqa: E402
from alexnet_pipeline.config import RUN_OPTIONS, Text  # noqa: E402
from alexnet_pipeline.lock import run_folder_lock  # noqa: E402
from alexnet_pipeline.ownership import RunIdentity  # noqa: E402
from alexnet_pipeline.timing import StageTimer  # noqa: E402
from flows.command_line import describe_parameters, start_up_breakdown  # noqa: E402
from flows.interrupt import keep_signals_in_flow  # noqa: E402
from tasks import preprocess, report, train  # noqa: E402
from tasks.caching import call_cached  # noqa: E402


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


@flow(name="full-run", persist_result=True)
@_run_settings_as_parameters
def full_run(*, preset: str = "default", config_file: str | None = None, **settings: Any) -> dict:
    """Fine-tune AlexNet and report validation and test accuracy per epoch;
    returns the run folder, the selected epoch, its accuracy and the final
    one, and the report's file paths.
    `settings`: the run settings by name (epochs=3, lr=1e-4, ...; see
    alexnet_pipeline.config.RUN_OPTIONS), each a typed flow parameter."""
    keep_signals_in_flow()
    cfg = config_for(preset, config_file, **{k: v for k, v in settings.items() if v is not None})
    timer = StageTimer()
    global _PROCESS_STARTED
    if _PROCESS_STARTED is not None:  # only the process's first flow run paid for start-up
        timer.seconds["start-up"] = round(time.time() - _PROCESS_STARTED, 3)
        timer.start_up = start_up_breakdown(_PROCESS_STARTED)
        _PROCESS_STARTED = None
    dataset_dir = preprocess.prepared_dataset(cfg, timer)
    meta = read_meta(dataset_dir)
    # The default run folder follows from the config and the data's content:
    # new images (a nightly retrain on a growing folder) get a new folder.
    run_dir = str(cfg.run_dir(meta["key"]).resolve())
    # One run per run folder, and only into a folder that is ours and holds this run.
    with run_folder_lock(run_dir, RunIdentity.of(cfg, meta["key"])):
        # Each checkpoint is evaluated (validation split and test set) as
        # soon as it is committed, inside this task: retention needs the
        # scores to drop what it does not keep while the run goes on.
        with timer.stage("train and evaluate"):
            summary = call_cached(train.fine_tune, train.still_valid, config=cfg, dataset_dir=dataset_dir,
                                  run_dir=run_dir, config_fingerprint=cfg.fingerprint())
        return report.report_run(run_dir, summary, meta, cfg.to_dict(), cfg.train.device, timer)
