"""Training throughput: the tutorial's recipe against the pipeline's own
training step, in one process, on one device, after warm-up, synchronised.

    python benchmarks/throughput.py              # on a GPU: full-size measurement
    python benchmarks/throughput.py --quick      # tiny counts, runs on the CPU (CI)

(a) seed: a faithful re-implementation of the recipe of the tutorial
    this project grew from (the seed preset): a PIL
    image per item, to_tensor + normalise + resize to 224 one image at a time
    on the CPU in the collate function, fp32, batch 128, AdamW 1e-5, and the
    host sync per step (.item()).
(b) pipeline: alexnet_pipeline.train.Trainer.train_epoch, the exact code
    path `python flows/full_run.py` trains with (data resident on the device
    as uint8, whole-batch augmentation there, bf16 autocast + channels_last
    on CUDA), and the same with the data streamed from host memory (the path
    for datasets larger than the device may hold).
Evaluation: alexnet_pipeline.evaluate.evaluate on a resident test set, and
one checkpoint evaluated end to end (load the file, rebuild, evaluate).

The data are random uint8 images at CIFAR-10's 32x32: throughput does not
depend on pixel values. What is excluded from the timings: model building,
the copy of the dataset to the device, and `--warmup` steps of each loop
(cuDNN autotuning, allocator growth). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alexnet_pipeline.checkpoint import load_checkpoint, model_from_checkpoint, save_epoch_checkpoint  # noqa: E402
from alexnet_pipeline.checkpoint import recent as recent_checkpoints  # noqa: E402
from alexnet_pipeline.config import TrainConfig  # noqa: E402
from alexnet_pipeline.data import allocated_npy  # noqa: E402
from alexnet_pipeline.device_data import resolve_device  # noqa: E402
from alexnet_pipeline.evaluate import evaluate  # noqa: E402
from alexnet_pipeline.model import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from alexnet_pipeline.train import build_trainer  # noqa: E402
from alexnet_pipeline.transforms import BatchTransform  # noqa: E402

NUM_CLASSES = 10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, count).astype(np.int64))


def bench_seed_recipe(device: torch.device, image_size: int, batch_size: int, warmup: int, steps: int) -> float:
    """The tutorial's loop, kept as it was (flaws included) to be the baseline."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.models import alexnet

    images, labels = random_images(batch_size * (warmup + steps), seed=1)
    dataset = [(Image.fromarray(img), int(lbl)) for img, lbl in zip(images, labels)]

    def collate(batch):
        tensors, targets = [], []
        for image, label in batch:
            x = TF.to_tensor(image)
            x = TF.normalize(x, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
            x = TF.resize(x, size=[image_size, image_size])
            tensors.append(x)
            targets.append(label)
        return torch.stack(tensors).to(device), torch.tensor(targets, device=device)

    model = alexnet(weights=None)
    model.classifier[-1] = torch.nn.Linear(4096, NUM_CLASSES)
    model = model.to(device).train()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loader = DataLoader(dataset, shuffle=True, batch_size=batch_size, collate_fn=collate)
    right = total = 0
    started = time.perf_counter() if warmup == 0 else None
    for step, (x, y) in enumerate(loader):
        outputs = model(x)
        loss = criterion(outputs, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        right += torch.sum(outputs.argmax(-1) == y).item()  # the per-step host sync
        total += len(y)
        _ = loss.item()
        if step == warmup - 1:
            # Started at the end of the last warm-up step, so the clock covers
            # the collate of the first timed batch too (the recipe's real cost).
            synchronize(device)
            started = time.perf_counter()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - started)


def bench_pipeline(device: torch.device, image_size: int, batch_size: int, warmup: int, steps: int,
                   resident_limit_bytes: int | None, stored_size: int = 32) -> tuple[float, bool]:
    """Images/s of the pipeline's own Trainer.train_epoch. With stored_size
    > 32 the images (as an image folder of photos would store them) are read
    through a memory-mapped file, as training reads the preprocessed cache."""
    count = batch_size * max(warmup, steps)
    _, labels = random_images(count, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        images = allocated_npy(Path(tmp) / "train_images.npy", (count, stored_size, stored_size, 3))
        block = np.random.default_rng(2).integers(0, 256, (min(count, 512),) + images.shape[1:], dtype=np.uint8)
        for start in range(0, count, len(block)):  # content does not matter for speed: repeat one random block
            images[start:start + len(block)] = block[: count - start]
        images.flush()
        cfg = TrainConfig(epochs=2, batch_size=batch_size, image_size=image_size, device=device.type)
        torch.manual_seed(0)
        trainer = build_trainer(cfg, "none", images, labels, np.arange(count), NUM_CLASSES, device,
                                resident_limit_bytes)
        trainer.train_epoch(1, progress=False, max_steps=warmup)
        stats = trainer.train_epoch(2, progress=False, max_steps=steps)  # synchronises before it stops the clock
        resident = trainer.data.resident
        del trainer, images
        free_memory(device)
    return stats.images_per_s, resident


def free_memory(device: torch.device) -> None:
    """Model, optimizer and data reference each other: collect them now, so
    the next measurement starts from an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_of(device: torch.device, fn, *args):
    """(fn(*args), peak GPU memory in GB while it ran, None on the CPU)."""
    if device.type != "cuda":
        return fn(*args), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn(*args)
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) / 1e9


def bench_evaluation(device: torch.device, image_size: int, count: int, batch_size: int) -> tuple[float, float, float]:
    """(images/s of evaluate(), seconds to evaluate one checkpoint end to end
    from its file, and from the copy kept in memory by the process that
    wrote it)."""
    from alexnet_pipeline.model import new_alexnet

    images, labels = random_images(count, seed=3)
    images_dev, labels_dev = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    channels_last = device.type == "cuda"
    transform = BatchTransform(image_size, IMAGENET_MEAN, IMAGENET_STD, device, channels_last)
    model = new_alexnet(NUM_CLASSES).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    evaluate(model, images_dev, labels_dev, transform, NUM_CLASSES, batch_size)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    evaluate(model, images_dev, labels_dev, transform, NUM_CLASSES, batch_size)
    eval_img_s = count / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alexnet-01.pt"
        save_epoch_checkpoint(path, {k: v.cpu() for k, v in model.state_dict().items()}, {
            "epoch": 1, "class_names": [str(i) for i in range(NUM_CLASSES)], "image_size": image_size,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        })

        def load_and_evaluate() -> float:
            synchronize(device)
            started = time.perf_counter()
            loaded = model_from_checkpoint(load_checkpoint(path), device)
            if channels_last:
                loaded = loaded.to(memory_format=torch.channels_last)
            evaluate(loaded, images_dev, labels_dev, transform, NUM_CLASSES, batch_size)
            return time.perf_counter() - started

        # As the full run's evaluation finds it: just written by this process.
        in_memory_seconds = load_and_evaluate()
        # As a later process finds it: read from the file (page cache warm).
        recent_checkpoints.clear()
        from_file_seconds = load_and_evaluate()
    return eval_img_s, from_file_seconds, in_memory_seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny counts at 64x64, for a CPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256, help="pipeline batch size")
    p.add_argument("--seed-batch-size", type=int, default=128, help="the tutorial's batch size")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before each measurement")
    p.add_argument("--steps", type=int, default=60, help="timed pipeline steps")
    p.add_argument("--seed-steps", type=int, default=20, help="timed steps of the tutorial's recipe")
    p.add_argument("--eval-images", type=int, default=10_000)
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--stream-limit-mb", type=float, default=None,
                   help="also time the streamed path with the device allowed only this much resident data "
                        "(default: 0, i.e. always stream in that row)")
    p.add_argument("--photo-stored-size", type=int, default=224,
                   help="stored side of the images in the second streamed row (an image folder of photos)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.seed_batch_size, args.photo_stored_size = 64, 8, 8, 96
        args.warmup, args.steps, args.seed_steps, args.eval_images, args.eval_batch_size = 1, 2, 2, 40, 20

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_img_s = bench_seed_recipe(device, args.image_size, args.seed_batch_size, args.warmup, args.seed_steps)
    free_memory(device)
    (pipeline_img_s, resident), peak_gb = peak_of(device, bench_pipeline, device, args.image_size, args.batch_size,
                                                  args.warmup, args.steps, None)
    limit = int((args.stream_limit_mb or 0) * 2**20)
    streamed_img_s, _ = bench_pipeline(device, args.image_size, args.batch_size, args.warmup, args.steps, limit)
    photo_img_s, _ = bench_pipeline(device, args.image_size, args.batch_size, args.warmup, args.steps, limit,
                                    stored_size=args.photo_stored_size)
    (eval_img_s, checkpoint_s, checkpoint_memory_s), eval_peak_gb = peak_of(
        device, bench_evaluation, device, args.image_size, args.eval_images, args.eval_batch_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    rows = [
        ("seed recipe (tutorial), train", f"batch {args.seed_batch_size}, fp32, CPU collate", seed_img_s),
        ("pipeline, train" + (" (resident)" if resident else " (streamed)"), f"batch {args.batch_size}", pipeline_img_s),
        ("pipeline, train, streamed from host", f"batch {args.batch_size}, stored 32x32", streamed_img_s),
        ("pipeline, train, streamed from host", f"batch {args.batch_size}, stored {args.photo_stored_size}x"
                                                f"{args.photo_stored_size}", photo_img_s),
        ("pipeline, evaluate", f"batch {args.eval_batch_size}", eval_img_s),
    ]
    print(f"\ndevice: {name}, torch {torch.__version__}, image size {args.image_size}, one run each, "
          f"{args.warmup} warm-up steps excluded")
    print(f"{'what':42} {'setting':32} {'images/s':>12}")
    for what, setting, value in rows:
        print(f"{what:42} {setting:32} {value:12,.1f}")
    print(f"one checkpoint, load + evaluate {args.eval_images} images: {checkpoint_s:.3f} s from its file, "
          f"{checkpoint_memory_s:.3f} s from memory (just written by this process)")
    if peak_gb is not None:
        print(f"peak GPU memory: {peak_gb:.2f} GB training (resident), {eval_peak_gb:.2f} GB evaluating")
    result = {
        "device": name,
        "torch": torch.__version__,
        "image_size": args.image_size,
        "seed_img_per_s": round(seed_img_s, 1),
        "pipeline_img_per_s": round(pipeline_img_s, 1),
        "streamed_img_per_s": round(streamed_img_s, 1),
        "streamed_photo_img_per_s": round(photo_img_s, 1),
        "speedup": round(pipeline_img_s / seed_img_s, 2),
        "eval_img_per_s": round(eval_img_s, 1),
        "checkpoint_eval_seconds": round(checkpoint_s, 3),
        "checkpoint_eval_in_memory_seconds": round(checkpoint_memory_s, 3),
        "peak_gpu_mem_gb": None if peak_gb is None else round(peak_gb, 2),
        "eval_peak_gpu_mem_gb": None if eval_peak_gb is None else round(eval_peak_gb, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
