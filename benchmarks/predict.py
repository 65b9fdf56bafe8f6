"""Predict's throughput on real JPEGs against the evaluation's, same device,
same image size, same batch size, in one process.

    python benchmarks/predict.py --archive cifar10-jpeg.tar.xz    # 3,000 CIFAR-10 JPEGs at 224x224
    python benchmarks/predict.py --archive cifar10-jpeg.tar.xz --per-class 30 --image-size 64 --runs 1

The images are CIFAR-10's as JPEGs, from an archive holding
cifar10-jpeg/{train,test}/<class>/*.jpg, extracted into a temporary folder
that is deleted afterwards. A one-epoch model (random init, 2 training images per class: throughput does
not depend on what it learned) gives the checkpoint. Then, alternately for
`--runs` rounds:
- evaluation: alexnet_pipeline.evaluate.evaluate_checkpoint on the test
  split's preprocess cache (decoded once beforehand, as a run does; loading
  the checkpoint is included, the cache's first read into memory is not);
- predict: alexnet_pipeline.predict.predict_files on the same test files
  (loading the checkpoint, decoding every JPEG on the decode threads and
  the forward pass, i.e. all of it; the files are in the page cache);
- decode only: the same files decoded on the same threads, no model
  (where predict's time goes when it is slower than evaluation).
Prints one JSON line: the images/s of each, and predict / evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_folder(archive: Path, work: Path, per_class: int) -> Path:
    """work/bench/{train,test}/<class>/*.jpg: 2 training images and
    `per_class` test images per class, hard links into the extracted copy."""
    subprocess.run(["tar", "-xJf", str(archive), "-C", str(work)], check=True)
    source = work / "cifar10-jpeg"
    bench = work / "bench"
    for split, count in (("train", 2), ("test", per_class)):
        for class_dir in sorted((source / split).iterdir()):
            target = bench / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                os.link(path, target / path.name)
    return bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", type=Path, required=True,
                   help="a .tar.xz of CIFAR-10 as JPEGs: cifar10-jpeg/{train,test}/<class>/*.jpg")
    p.add_argument("--per-class", type=int, default=300, help="test images per class (10 classes)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=250, help="evaluation's and predict's batch size")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", type=int, default=2, help="rounds of (evaluation, predict, decode only)")
    args = p.parse_args(argv)

    import torch

    from alexnet_pipeline.cache import preprocess
    from alexnet_pipeline.config import resolve_config
    from alexnet_pipeline.data import bounded_map, decode_image
    from alexnet_pipeline.device_data import resolve_device
    from alexnet_pipeline.evaluate import eval_set_on_device, evaluate_checkpoint
    from alexnet_pipeline.predict import checkpoint_preprocessing, image_files, predict_files
    from alexnet_pipeline.checkpoint import load_checkpoint
    from alexnet_pipeline.train import train_run

    if not args.archive.is_file():
        print(f"error: {args.archive} does not exist; pass --archive with the path of cifar10-jpeg.tar.xz", file=sys.stderr)
        return 1
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    try:
        bench = build_folder(args.archive, work, args.per_class)
        cfg = resolve_config("default", overrides={
            "data.dataset": "imagefolder", "data.data_dir": str(bench), "data.cache_dir": str(work / "cache"),
            "model.weights": "none", "train.epochs": 1, "train.batch_size": 10, "train.image_size": args.image_size,
            "train.device": str(device), "train.eval_batch_size": args.batch_size})
        dataset_dir = preprocess(cfg.data, args.image_size, progress=False)
        run_dir = work / "runs" / "bench"
        train_run(cfg, dataset_dir, run_dir, progress=False)
        checkpoint = run_dir / "checkpoints" / "alexnet-01.pt"
        files = image_files([bench / "test"])
        stored = checkpoint_preprocessing(load_checkpoint(checkpoint)).stored_size
        eval_set_on_device(dataset_dir, "test", None, device)  # the cache read once, as a run's evaluation has it

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def timed(fn) -> float:
            sync()
            started = time.perf_counter()
            fn()
            sync()
            return len(files) / (time.perf_counter() - started)

        def decode_only():
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                for _ in bounded_map(pool, lambda f: decode_image(f, stored), files, window=2 * args.batch_size):
                    pass

        rates = {"evaluation": [], "predict": [], "decode_only": []}
        predict_files(checkpoint, files[: args.batch_size], device=str(device), batch_size=args.batch_size)  # warm-up
        for _ in range(args.runs):
            rates["evaluation"].append(timed(lambda: evaluate_checkpoint(checkpoint, dataset_dir, device=str(device),
                                                                         batch_size=args.batch_size)))
            rates["predict"].append(timed(lambda: predict_files(checkpoint, files, device=str(device),
                                                                batch_size=args.batch_size)))
            rates["decode_only"].append(timed(decode_only))
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": str(torch.__version__), "images": len(files), "image_size": args.image_size,
            "stored_size": stored, "batch_size": args.batch_size, "runs": args.runs,
            **{f"{name}_img_per_s": [round(r, 1) for r in values] for name, values in rates.items()},
            "predict_over_evaluation": round(statistics.median(rates["predict"]) / statistics.median(rates["evaluation"]), 3),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
