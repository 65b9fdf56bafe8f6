"""Export a trained model as one self-contained file, checked against
PyTorch on real images before it is called done.

    python flows/export.py runs/cifar10-none-e2-0123456789 --format onnx          # the selected checkpoint
    python flows/export.py RUN_DIR --format safetensors --out alexnet.safetensors
    python flows/export.py RUN_DIR/checkpoints/alexnet-02.pt --format onnx --check-images photos/

Writes the model file and a JSON file beside it (NAME.onnx.json) (class names, image size,
mean/std, the preprocessing in words, the check's result). Exits 1 when the
exported model disagrees with PyTorch. Needs the `export` extra:
pip install -e ".[export]". Prefect is not involved: exporting is one local
file conversion, with nothing to schedule, retry or cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet_pipeline.config import absolute_path

FORMAT_SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT", type=absolute_path, help="run folder (its selected checkpoint) or checkpoint file")
    p.add_argument("--format", choices=list(FORMAT_SUFFIX), default="onnx", help="default: %(default)s")
    p.add_argument("--epoch", type=int, help="export this epoch's checkpoint of the run folder instead of the selected one")
    p.add_argument("--out", type=absolute_path, help="the model file to write (default: RUN-eNN.onnx or .safetensors in the current folder)")
    p.add_argument("--check-images", nargs="+", metavar="PATH", type=absolute_path,
                   help="image files or folders to check the export on (default: the run's cached test set)")
    p.add_argument("--check-count", type=int, default=256, help="images to check on (default: %(default)s)")
    return p.parse_args(argv)


def default_out(checkpoint: Path, fmt: str) -> Path:
    from alexnet_pipeline.checkpoint import checkpoint_epoch

    return Path(f"{checkpoint.parent.parent.name}-e{checkpoint_epoch(checkpoint):02d}{FORMAT_SUFFIX[fmt]}")


def run(args: argparse.Namespace) -> int:
    from alexnet_pipeline import export
    from alexnet_pipeline.errors import ConfigError
    from alexnet_pipeline.predict import image_files
    from alexnet_pipeline.selection import resolve_model

    if args.check_count < 1:
        raise ConfigError(f"--check-count: must be at least 1, got {args.check_count}")
    checkpoint = resolve_model(args.model, args.epoch)
    out = Path(args.out) if args.out else default_out(checkpoint, args.format)
    files = image_files(args.check_images) if args.check_images else None
    images, source = export.check_images(checkpoint, files, args.check_count)
    if args.format == "onnx":
        meta = export.export_onnx(checkpoint, out)
        check = export.check_onnx(out, checkpoint, images)
    else:
        meta = export.export_safetensors(checkpoint, out)
        check = export.check_safetensors(out, checkpoint, images)
    described = export.write_metadata(out, meta, check)
    print(f"{out}: {args.format} of {checkpoint} (epoch {meta['epoch']}, {len(meta['class_names'])} classes)\n"
          f"input: {meta['input']}\n{described}: class names, sizes, mean/std, preprocessing\n"
          f"check on {source}: {check.against} and PyTorch agree on the top-1 class of {check.same_top1} of "
          f"{check.num_images}; largest logit difference {check.max_logit_difference:.3g}")
    if not check.passed:
        print(f"error: the exported model disagrees with PyTorch (tolerance {export.ONNX_TOLERANCE:g}); do not use "
              f"{out}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from alexnet_pipeline.errors import PipelineError

    try:
        return run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
