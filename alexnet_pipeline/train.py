"""The training loop: data resident on the device as uint8, whole-batch
augmentation there, bf16 autocast + channels_last on CUDA, fp32 on the CPU,
one checkpoint per epoch written by a background thread
(checkpoint_writer.py), resume from the last complete epoch (resume.py).

    from alexnet_pipeline.train import train_run
    history = train_run(cfg, dataset_dir, run_dir)   # list[EpochStats]

Determinism: epoch N's order, augmentation and dropout are drawn from
generators seeded by (seed, N) alone, so a run resumed after epoch K repeats
exactly what an uninterrupted run does from K+1 on (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet_pipeline import checkpoint as ckpt_io
from alexnet_pipeline import faults
from alexnet_pipeline.cache import load_arrays, read_meta
from alexnet_pipeline.checkpoint_writer import CheckpointWriter, Snapshot, write_epoch
from alexnet_pipeline.config import PipelineConfig, TrainConfig
from alexnet_pipeline.data import balanced_subset, validation_split
from alexnet_pipeline.device_data import DeviceDataset, resolve_device
from alexnet_pipeline.errors import ConfigError, DeviceMemoryError, TrainingDivergedError
from alexnet_pipeline.model import IMAGENET_MEAN, IMAGENET_STD, build_alexnet
from alexnet_pipeline.ownership import RunIdentity, claim_run_folder
from alexnet_pipeline.preflight import check_crop_padding
from alexnet_pipeline.record import RECORD_NAME, TRAIN_FIELDS, RunRecord
from alexnet_pipeline.retention import EpochBook, remove_stale_checkpoints
from alexnet_pipeline.resume import restore_last_epoch
from alexnet_pipeline.transforms import Augmentation, BatchTransform
from alexnet_pipeline.versions import TRAIN_VERSION  # noqa: F401 - the task's cache key; bump it there

log = logging.getLogger(__name__)

# Steps between progress-bar updates: each one costs a host-device sync.
SYNC_EVERY = 25


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    lr: float
    epoch_seconds: float
    images_per_s: float
    checkpoint: str
    checkpoint_sha256: str = ""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr at a step (LambdaLR keeps it resumable):
    a linear warm-up under either schedule, then constant or cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_run(
    cfg: PipelineConfig,
    dataset_dir: Path,
    run_dir: Path,
    *,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    resident_limit_bytes: int | None = None,
) -> list[EpochStats]:
    t = cfg.train
    device = resolve_device(t.device)
    checkpoint_dir = Path(run_dir) / "checkpoints"

    fingerprint = cfg.fingerprint()
    dataset_key = read_meta(dataset_dir)["key"]
    record = RunRecord.load(run_dir)
    if record is not None and record.is_of(fingerprint, dataset_key) and record.finished and (
            damaged := record.damaged_checkpoints(run_dir)):
        # Its resume state is gone: the model the user keeps is made again
        # from the start (bit for bit the same numbers on the CPU).
        log.warning("Checkpoint %s does not match the hash recorded when it was written; training restarts "
                    "from epoch 1 to make it again", ", ".join(str(p) for p in damaged))
        record = None
    if record is not None and record.is_of(fingerprint, dataset_key) and record.finished:
        # Finished: its record holds every epoch, whichever checkpoints are
        # still there (pruned, or deleted by hand). Nothing to train.
        claim_run_folder(run_dir, RunIdentity(cfg.to_dict(), dataset_key, fingerprint))
        log.info("%s has finished all %d epochs (its %s); nothing to train", run_dir, t.epochs, RECORD_NAME)
        EpochBook(cfg, dataset_dir, run_dir, record).finish()  # a run killed while finishing: done now
        return history_of(record, run_dir)
    arrays = load_arrays(dataset_dir)
    class_names = arrays.class_names
    # The validation split is held out first, then --subset taken from the
    # rest: the same split whatever the subset, seed or trial. An image
    # folder with its own val/ trains on all of train/.
    trainable = (np.arange(len(arrays.train_labels)) if arrays.val_images is not None else
                 validation_split(arrays.train_labels, cfg.data.val_fraction, len(class_names))[0])
    keep = trainable[balanced_subset(arrays.train_labels[trainable], cfg.data.subset, len(class_names))]
    if t.batch_size > len(keep):
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is larger than the {len(keep)} training images; use a smaller --batch-size"
        )
    check_crop_padding(t, arrays.train_images.shape[1])
    torch.manual_seed(t.seed)
    with _out_of_memory_hint(t, "building the model"):
        trainer = build_trainer(t, cfg.model.weights, arrays.train_images, arrays.train_labels, keep,
                                len(class_names), device, resident_limit_bytes)
    # Nothing is written, deleted or created before the folder is known to
    # be ours and to hold this run (marker, resume.pt and every checkpoint
    # agree), and only now: a run refused above (bad settings, weights that
    # cannot be had) leaves no folder behind.
    claim_run_folder(run_dir, RunIdentity(cfg.to_dict(), dataset_key, fingerprint))
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt_io.remove_partial_files(checkpoint_dir)
    ckpt_io.finish_interrupted_commit(checkpoint_dir)
    model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.scheduler
    cuda = device.type == "cuda"

    if record is None or not record.is_of(fingerprint, dataset_key):
        record = RunRecord(fingerprint, dataset_key, t.epochs)
    resume_state = restore_last_epoch(checkpoint_dir, cfg, dataset_key, model, optimizer, scheduler,
                                      evaluated=record.evaluated)
    history = [EpochStats(**h) for h in resume_state["history"]]
    start_epoch = resume_state["epoch"] + 1
    if start_epoch > 1:
        log.info("Resuming %s after epoch %d of %d", run_dir, start_epoch - 1, t.epochs)
    else:
        # Saved before anything is removed: a run killed next finds a record
        # of nothing, not the record of what it was removing.
        record = RunRecord(fingerprint, dataset_key, t.epochs)
        record.save(run_dir)
        remove_stale_checkpoints(checkpoint_dir)
    book = EpochBook(cfg, dataset_dir, run_dir, record)

    meta_base = {
        "class_names": class_names,
        "num_classes": len(class_names),
        "image_size": t.image_size,
        # The side images are decoded to before the model's resize: what
        # prediction must decode new files to, to score them as evaluation does.
        "stored_size": int(arrays.train_images.shape[1]),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "config": cfg.to_dict(),
        "config_fingerprint": fingerprint,
        "seed": t.seed,
        "dataset_key": dataset_key,
        "torch_version": str(torch.__version__),
    }
    written = dict(resume_state["checkpoints"])
    # A run killed between an epoch's commit and its evaluation (or its
    # pruning) catches up first.
    book.catch_up(written, [dataclasses.asdict(h) for h in history])
    book.prune()
    # On a GPU a private snapshot of the state (a device-to-device copy) is
    # taken and a background thread brings it to the host and writes it
    # while the next epochs train (an epoch can be shorter than its write:
    # two may wait). On the CPU an epoch is far longer than its write, and a
    # copy would be a second 0.7 GB of training state (AlexNet's weights and
    # AdamW's moments) in the same memory: the state is written as it is,
    # before the next epoch changes it.
    in_background = writes_in_background(device)
    writer = CheckpointWriter(max_pending=2 if in_background else 0)
    take_snapshot = Snapshot.private if in_background else Snapshot.as_it_is
    snapshot_seconds = 0.0  # what training paid for the writer's snapshots
    try:
        for epoch in range(start_epoch, t.epochs + 1):
            if faults.armed("mid-epoch", epoch):
                writer.drain()  # crash tests: the same state on disk every time
            with _out_of_memory_hint(t, f"epoch {epoch}"):
                stats = trainer.train_epoch(epoch, progress)
                writer.wait_for_room()
                snapshot_started = time.perf_counter()
                state = take_snapshot({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
            stats.checkpoint = str(ckpt_io.checkpoint_path(checkpoint_dir, epoch))
            history.append(stats)
            resume_state = {
                "epoch": epoch,
                "config_fingerprint": fingerprint,
                "config": cfg.to_dict(),
                "dataset_key": dataset_key,
                "optimizer": None,  # the snapshot's, filled in by the writer
                "scheduler": scheduler.state_dict(),
                "history": [dataclasses.asdict(h) for h in history],
            }
            meta = {**meta_base, "epoch": epoch, "train_stats": dataclasses.asdict(stats)}
            snapshot_seconds += time.perf_counter() - snapshot_started
            # Only a private copy may be kept in memory for evaluation (a GPU run's).
            writer.submit(write_epoch, checkpoint_dir, epoch, state, meta, resume_state, written, in_background)
            if on_epoch_end is not None:
                on_epoch_end(stats)
            # What the writer has committed meanwhile (on the CPU: this
            # epoch) is evaluated now, so that retention can drop the
            # checkpoints it does not keep while the run goes on.
            book.catch_up(dict(written), [dataclasses.asdict(h) for h in history])
        writer.drain()
        book.catch_up(dict(written), [dataclasses.asdict(h) for h in history])
        if t.epochs >= start_epoch:
            log.info(writer.summary(t.epochs - start_epoch + 1, snapshot_seconds))
    finally:
        writer.close()
        # The model, optimizer and resident data reference each other: without
        # a collection their GPU memory would stay taken through evaluation.
        del trainer, model, optimizer, scheduler
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            # The writer's page-locked host buffers stay cached by torch after
            # their snapshots are freed (0.7 GB each): give them back too.
            release_pinned = getattr(torch._C, "_host_emptyCache", None)
            if release_pinned is not None:
                release_pinned()
    book.finish()
    return history_of(record, run_dir)


def history_of(record: RunRecord, run_dir: Path) -> list[EpochStats]:
    """The training stats of every epoch, as the run record holds them."""
    return [EpochStats(**{k: row[k] for k in TRAIN_FIELDS}, checkpoint=str(Path(run_dir) / row["checkpoint"]),
                       checkpoint_sha256=row["checkpoint_sha256"]) for row in record.rows]


def writes_in_background(device: torch.device) -> bool:
    """Whether checkpoints are written from private snapshots on a
    background thread (a GPU) or in place between epochs (the CPU); see
    train_run."""
    return device.type == "cuda"


@contextlib.contextmanager
def _out_of_memory_hint(t: TrainConfig, where: str):
    """Turn CUDA's out-of-memory error (a page of allocator statistics) into
    what to change."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise DeviceMemoryError(
            f"the GPU ran out of memory in {where} (batch size {t.batch_size}, image size {t.image_size}). "
            f"Run again with a smaller --batch-size (e.g. --batch-size {max(1, t.batch_size // 2)}) or a smaller "
            "--image-size (that starts a new run: both change the results). "
            "Other processes on the same GPU (see nvidia-smi) also take its memory."
        ) from None


@dataclass
class Trainer:
    """Everything a training step touches, built once per run. The benchmark
    (benchmarks/throughput.py) times this same object."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    transform: BatchTransform
    data: DeviceDataset
    batch_size: int
    epochs: int
    seed: int
    crop_padding: int | None  # None: no augmentation

    def autocast(self):
        if self.data.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, epoch: int, progress: bool = True, max_steps: int | None = None) -> EpochStats:
        """One epoch (or its first `max_steps` steps, for benchmarks)."""
        from tqdm import tqdm

        data, device = self.data, self.data.device
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(data.count, generator=generator)
        augmentation = (Augmentation.draw(data.count, self.crop_padding, generator).to(device)
                        if self.crop_padding is not None else None)
        # Dropout draws from the global generators: reseed them per epoch too.
        torch.manual_seed(epoch_seed(self.seed, epoch) + 1)
        self.model.train()
        steps = math.ceil(data.count / self.batch_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
            order = order[: steps * self.batch_size]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="batch", disable=not progress)
        started = time.perf_counter()
        for step, (images, labels, index) in enumerate(data.batches(order, self.batch_size)):
            aug = augmentation.select(index) if augmentation is not None else None
            inputs = self.transform(images, aug)
            with self.autocast():
                logits = self.model(inputs)
                loss = self.criterion(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            # Accumulated on the device: reading them back is a sync, done rarely.
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.shape[0]
            # Before the last step whenever there are two or more: truly mid-epoch.
            if step == (steps - 1) // 2:
                faults.crash_point("mid-epoch", epoch)
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == steps:
                running_loss = loss_sum.item() / seen
                if not math.isfinite(running_loss):
                    raise TrainingDivergedError(
                        f"the training loss became {running_loss} in epoch {epoch} by step {step + 1} of {steps}; "
                        f"the checkpoints of epochs before {epoch} are kept. Lower the learning rate (--lr) and run again."
                    )
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{running_loss:.4f}", acc=f"{correct.item() / seen:.4f}",
                                img_s=f"{seen / elapsed:,.0f}")
            bar.update()
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        return EpochStats(
            epoch=epoch,
            train_loss=loss_sum.item() / seen,
            train_acc=correct.item() / seen,
            lr=self.scheduler.get_last_lr()[0],
            epoch_seconds=round(seconds, 3),
            images_per_s=round(seen / seconds, 1),
            checkpoint="",
        )


def build_trainer(t: TrainConfig, weights: str, images: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                  num_classes: int, device: torch.device, resident_limit_bytes: int | None = None) -> Trainer:
    """Model, optimizer, schedule and data on `device`; seed the global RNG
    first when the initial weights should be reproducible."""
    data = DeviceDataset(images, labels, keep, device, resident_limit_bytes)
    steps_per_epoch = math.ceil(len(keep) / t.batch_size)
    total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(t.warmup_epochs * steps_per_epoch)
    cuda = device.type == "cuda"
    if cuda:
        # Input shapes are fixed: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    model = build_alexnet(num_classes, weights).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    # fused AdamW, on the CPU too: one kernel for all parameters instead of
    # several per tensor, and no per-tensor temporaries (on the CPU 0.3 GB
    # less peak host memory for AlexNet, and faster).
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.resolved_lr(weights), weight_decay=t.weight_decay,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(t.schedule, step, total_steps, warmup_steps)
    )
    return Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        transform=BatchTransform(t.image_size, IMAGENET_MEAN, IMAGENET_STD, device, channels_last=cuda),
        data=data,
        batch_size=t.batch_size,
        epochs=t.epochs,
        seed=t.seed,
        crop_padding=t.crop_padding if t.augment else None,
    )
