"""Classify image files with a trained model: predictions.csv holds each
file's predicted class and probability and its top-k classes, with the
reason for any file that could not be decoded. The images are preprocessed
exactly as the run's evaluation preprocessed its test set.

    python flows/predict.py runs/cifar10-none-e2-0123456789 photos/ cat.jpg   # the run's selected checkpoint
    python flows/predict.py RUN_DIR photos/ --epoch 3 --top-k 3 --out photos.csv
    python flows/predict.py RUN_DIR/checkpoints/alexnet-02.pt photos/

Folders are searched recursively. The selected checkpoint is the report's
best epoch (alexnet_pipeline/selection.py). Runs on Prefect's temporary
local server unless PREFECT_API_URL names one.
"""

from __future__ import annotations

if __name__ == "__main__":  # a signal during the imports below (seconds) ends the run cleanly too
    from flows.interrupt import install

    install("run the same command again")

import argparse  # noqa: E402
import importlib
import sys
from functools import partial
from typing import Annotated

# Light imports only above the flow below: --help and a refusal answer at once.
from alexnet_pipeline.config import absolute_path
from alexnet_pipeline.predict import DEFAULT_TOP_K
from flows.command_line import run_flow_command

HELP = {
    "model": "run folder (its selected checkpoint) or checkpoint file; default: the newest run under "
             "$ALEXNET_PIPELINE_RUNS_ROOT or runs/",
    "images": "image files and folders (searched recursively)",
    "out": "the CSV to write",
    "epoch": "use this epoch's checkpoint of the run folder instead of the selected one",
    "top_k": "how many of the most probable classes to list per image",
    "batch_size": "images per forward pass (default: the run's evaluation batch size)",
    "device": "auto: a CUDA GPU when there is one",
    "decode_workers": "threads decoding images (default: one per CPU)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT", type=absolute_path, help=HELP["model"].split(";")[0])
    p.add_argument("images", nargs="+", metavar="IMAGES", type=absolute_path, help=HELP["images"])
    p.add_argument("--out", default="predictions.csv", type=absolute_path, help=HELP["out"] + " (default: %(default)s)")
    p.add_argument("--epoch", type=int, help=HELP["epoch"])
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=HELP["top_k"] + " (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help=HELP["batch_size"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help=HELP["device"])
    p.add_argument("--decode-workers", type=int, help=HELP["decode_workers"])
    return p.parse_args(argv)


def _summary(result: dict) -> str:
    lines = [f"\n{result['predicted']} of {result['files']} files classified with {result['checkpoint']} "
             f"on {result['device']} in {result['seconds']:.1f} s ({result['images_per_s']} images/s)"]
    if result["failed"]:
        lines.append(f"{result['failed']} could not be classified: their reasons are in the error column")
    if result["folder_total"]:
        lines.append(f"accuracy against the folder names: {result['folder_correct'] / result['folder_total'] * 100:.2f}% "
                     f"({result['folder_correct']} of {result['folder_total']})")
    lines.append(f"predictions: {result['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))

    def check_before_prefect_starts() -> None:
        from alexnet_pipeline.errors import ConfigError
        from alexnet_pipeline.selection import resolve_model  # torch: reads the checkpoint

        for name in ("epoch", "top_k", "batch_size", "decode_workers"):
            if args[name] is not None and args[name] < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {args[name]}")
        # Chosen once, here: the flow gets the checkpoint itself.
        args["model"], args["epoch"] = str(resolve_model(args["model"], args["epoch"])), None
        image_files(args["images"])

    return run_flow_command(lambda: _flow_module().predict(**args), _summary, before=check_before_prefect_starts,
                            hint="run the same command again", while_server_starts=_flow_module,
        start_server_early=__name__ == "__main__")


def _flow_module():
    """This file with its flow: run as a script, it is __main__ and stops
    before the flow's imports (torch, Prefect); importing it by name runs it
    once more, whole."""
    return importlib.import_module("flows.predict")


# Run as a script, this file stops here: main() imports the flow below only
# once the checks have passed, and while the temporary server starts.
if __name__ == "__main__":
    sys.exit(main())

import tasks  # noqa: E402, F401 - first: sets Prefect's environment defaults before prefect is imported
from prefect import flow  # noqa: E402
from pydantic import Field  # noqa: E402

from alexnet_pipeline.config import RUN_OPTIONS, Text, runs_root  # noqa: E402
from alexnet_pipeline.predict import image_files  # noqa: E402
from alexnet_pipeline.run_folder import latest_run_dir  # noqa: E402
from alexnet_pipeline.selection import resolve_model  # noqa: E402
from flows.command_line import describe_parameters  # noqa: E402
from flows.interrupt import keep_signals_in_flow  # noqa: E402
from tasks.predict import predict_task  # noqa: E402

Device = RUN_OPTIONS["device"].value_type
Positive = Annotated[int, Field(ge=1)]


@flow(name="predict", persist_result=True)
@partial(describe_parameters, descriptions=HELP)
def predict(
    images: list[Text],
    model: Text | None = None,
    out: Text = "predictions.csv",
    epoch: Positive | None = None,
    top_k: Positive = DEFAULT_TOP_K,
    batch_size: Positive | None = None,
    device: Device = "auto",
    decode_workers: Positive | None = None,
) -> dict:
    """Classify `images` with `model`'s checkpoint and write `out`; returns
    how many were classified and where the CSV is."""
    keep_signals_in_flow()
    checkpoint = resolve_model(model if model else latest_run_dir(runs_root()), epoch)
    files = [str(p) for p in image_files(images)]
    return predict_task(str(checkpoint), files, out, top_k, batch_size, device, decode_workers)
