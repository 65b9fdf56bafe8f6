"""What the checkpoint writer costs training: the library's train_run (the
code `python flows/full_run.py` trains with) on random images, with its
"checkpoint writer: ..." log line, against the old way of handing a
checkpoint to the writer (copying the state to pageable host memory on the
training thread), timed in the same process.

    python benchmarks/checkpoint_stall.py               # on a GPU: 224x224, 20,000 images, 6 epochs
    python benchmarks/checkpoint_stall.py --quick       # tiny, on the CPU (mechanics only)

Prints the writer's line, the seconds per epoch, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alexnet_pipeline.checkpoint_writer import _map_tensors  # noqa: E402
from alexnet_pipeline.config import resolve_config  # noqa: E402
from alexnet_pipeline.device_data import resolve_device  # noqa: E402
from alexnet_pipeline.train import build_trainer, train_run  # noqa: E402


def write_dataset(folder: Path, images: int, rng: np.random.Generator) -> None:
    """A cache entry in preprocess()'s layout: random 32x32 images, 10 classes."""
    folder.mkdir(parents=True)
    arrays = {
        "train_images": rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, images).astype(np.int64),
        "test_images": rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 100).astype(np.int64),
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    (folder / "meta.json").write_text(json.dumps({"key": "benchmark", "class_names": [f"c{i}" for i in range(10)],
                                                     "stored_size": 32, "num_train": images, "num_test": 100}))


def old_handover_seconds(cfg, device: torch.device, repeats: int) -> float:
    """Seconds per epoch the training thread paid before: every tensor of
    the weights and AdamW state copied to fresh pageable host memory."""
    t = cfg.train
    rng = np.random.default_rng(1)
    count = t.batch_size * 2
    trainer = build_trainer(t, "none", rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 10, count).astype(np.int64), np.arange(count), 10, device)
    trainer.train_epoch(1, progress=False, max_steps=1)  # creates AdamW's state
    state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    took = []
    for _ in range(repeats):
        started = time.perf_counter()
        copy = _map_tensors(state, lambda x: x.detach().to("cpu", copy=True))
        took.append(time.perf_counter() - started)
        del copy
    return float(np.median(took))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.image_size = 16, 2, 64
    device = resolve_device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("alexnet_pipeline").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "data" / "entry"
        write_dataset(dataset, args.images, np.random.default_rng(0))
        cfg = resolve_config("default", overrides={
            "train.epochs": args.epochs, "train.image_size": args.image_size, "train.device": device.type,
            "train.batch_size": 8 if args.quick else 256, "model.weights": "none",
            "data.data_dir": str(Path(tmp) / "data")})
        started = time.perf_counter()
        history = train_run(cfg, dataset, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - started
        old = old_handover_seconds(cfg, device, repeats=3)
    epoch_s = [h.epoch_seconds for h in history]
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print(f"train_run: {args.epochs} epochs of {args.images} images at {args.image_size}px in {wall:.1f} s; "
          f"epoch seconds {', '.join(f'{s:.2f}' for s in epoch_s)}")
    print(f"old hand-over (state to pageable host memory on the training thread): {old:.3f} s per epoch")
    print(json.dumps({"device": device.type, "torch": torch.__version__, "epochs": args.epochs, "images": args.images,
                      "train_run_seconds": round(wall, 2), "epoch_seconds": [round(s, 3) for s in epoch_s],
                      "old_handover_seconds": round(old, 3)}))


if __name__ == "__main__":
    main()
