"""Where a training step's time goes: the pipeline's own Trainer (the code
`python flows/full_run.py` trains with) under torch.profiler, with the work
per image counted, so a missed throughput target has a measured reason.

    python benchmarks/profile_step.py                  # on a GPU: 224x224, batch 256
    python benchmarks/profile_step.py --compile        # also time torch.compile'd model
    python benchmarks/profile_step.py --quick          # tiny, on the CPU (mechanics only)

Prints: images/s over the timed steps, FLOPs per image (torch's counter) and
the rate they run at, the share of the wall time the GPU was busy (kernel
time / wall: low means the step is bound by Python or launches), and the
kernels that take the most time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alexnet_pipeline.config import TrainConfig  # noqa: E402
from alexnet_pipeline.device_data import resolve_device  # noqa: E402
from alexnet_pipeline.train import build_trainer  # noqa: E402


def timed_steps(trainer, steps: int, epoch: int) -> float:
    stats = trainer.train_epoch(epoch, progress=False, max_steps=steps)  # synchronises before it stops the clock
    return stats.images_per_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.steps = 64, 8, 3
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    count = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int64)
    cfg = TrainConfig(epochs=10, batch_size=args.batch_size, image_size=args.image_size, device=device.type)
    torch.manual_seed(0)
    trainer = build_trainer(cfg, "none", images, labels, np.arange(count), 10, device)

    timed_steps(trainer, max(3, args.steps // 4), 1)  # warm-up: cuDNN autotuning, allocator
    eager = timed_steps(trainer, args.steps, 2)
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}, "
          f"image size {args.image_size}, batch {args.batch_size}")
    print(f"pipeline step, eager: {eager:,.0f} images/s")

    # FLOPs of one forward + backward, counted by torch (matmuls and convolutions).
    x = trainer.transform(trainer.data.images[: args.batch_size] if trainer.data.resident
                          else torch.from_numpy(images[: args.batch_size]).to(device))
    y = trainer.data.labels[: args.batch_size]
    with FlopCounterMode(display=False) as counter, trainer.autocast():
        trainer.criterion(trainer.model(x), y).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    flops_per_image = counter.get_total_flops() / args.batch_size
    print(f"work: {flops_per_image / 1e9:.2f} GFLOP per image (forward + backward); at {eager:,.0f} images/s "
          f"that is {flops_per_image * eager / 1e12:.1f} TFLOP/s")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiled_steps = min(args.steps, 10)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        trainer.train_epoch(3, progress=False, max_steps=profiled_steps)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    if cuda:
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"profiled {profiled_steps} steps: wall {wall * 1e3:.1f} ms, GPU kernels {kernel_us / 1e3:.1f} ms "
              f"({kernel_us / 1e6 / wall:.0%} busy)")
        sort = "self_cuda_time_total"
    else:
        sort = "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=18, max_name_column_width=70))

    if args.compile:
        started = time.perf_counter()
        trainer.model = torch.compile(trainer.model)
        timed_steps(trainer, max(3, args.steps // 4), 4)  # compiles here
        compile_seconds = time.perf_counter() - started
        compiled = timed_steps(trainer, args.steps, 5)
        print(f"pipeline step, torch.compile: {compiled:,.0f} images/s ({compiled / eager:.2f}x eager; "
              f"compiling and warm-up took {compile_seconds:.0f} s)")


if __name__ == "__main__":
    main()
