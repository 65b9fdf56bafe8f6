"""Fine-tune stage: the training loop on tiny CPU data, self-describing
checkpoints, resume (bit-identical on the CPU), the lr schedule and the
whole-batch transforms."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet_pipeline.cache import load_arrays, preprocess, read_meta
from alexnet_pipeline.checkpoint import RESUME_NAME, load_checkpoint, model_from_checkpoint
from alexnet_pipeline.config import TrainConfig, base_type, config_from_dict, resolve_config
from alexnet_pipeline.device_data import DeviceDataset
from alexnet_pipeline.download import ensure_cifar10
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.model import IMAGENET_MEAN, IMAGENET_STD
from alexnet_pipeline.ownership import RUN_MARKER
from alexnet_pipeline.record import RunRecord
from alexnet_pipeline.train import lr_factor, train_run
from alexnet_pipeline.transforms import Augmentation, BatchTransform
from tests.fixtures import CLASS_NAMES, sha256_of

TRAIN = {"model.weights": "none", "train.epochs": 2, "train.batch_size": 5, "train.image_size": 64,
         "train.device": "cpu", "train.seed": 3, "data.subset": 10}
# Differ between two runs of the same config: timings, and what names them.
TIMING_FIELDS = {"epoch_seconds", "images_per_s", "checkpoint", "checkpoint_sha256"}


@pytest.fixture(scope="module")
def dataset_dir(module_tmp, cifar_archive_dir) -> Path:
    data_dir = module_tmp("train-data")
    shutil.copy(cifar_archive_dir / "cifar-10-python.tar.gz", data_dir)
    batches = ensure_cifar10(data_dir, verify=False, progress=False)
    cfg = resolve_config("default", overrides={**TRAIN, "data.data_dir": str(data_dir)})
    return preprocess(cfg.data, cfg.train.image_size, batches, progress=False)


def make_config(dataset_dir: Path, **extra):
    return resolve_config("default", overrides={**TRAIN, "data.data_dir": str(dataset_dir.parent.parent), **extra})


@pytest.fixture(scope="module")
def trained(dataset_dir, module_tmp):
    """One uninterrupted 2-epoch run (10 images, 2 steps per epoch)."""
    run_dir = module_tmp("trained")
    cfg = make_config(dataset_dir)
    history = train_run(cfg, dataset_dir, run_dir, progress=False)
    return cfg, run_dir, history


@pytest.fixture(scope="module")
def unfinished(dataset_dir, tmp_path_factory):
    """The same run stopped right after epoch 2's commit, before its
    evaluation: the folder a killed run leaves, with resume.pt, both
    checkpoints and a record of epoch 1 only."""
    run_dir = tmp_path_factory.mktemp("unfinished")
    cfg = make_config(dataset_dir)

    def stop_after_last(stats):
        if stats.epoch == cfg.train.epochs:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_run(cfg, dataset_dir, run_dir, on_epoch_end=stop_after_last, progress=False)
    return cfg, run_dir


def numbers(history) -> list[dict]:
    rows = [h if isinstance(h, dict) else dataclasses.asdict(h) for h in history]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def test_history_and_checkpoints(trained):
    cfg, run_dir, history = trained
    assert [h.epoch for h in history] == [1, 2]
    for h in history:
        path = Path(h.checkpoint)
        assert path == run_dir / "checkpoints" / f"alexnet-{h.epoch:02d}.pt"
        assert h.checkpoint_sha256 == sha256_of(path)
        assert math.isfinite(h.train_loss) and 0 <= h.train_acc <= 1 and h.epoch_seconds > 0
    # Warm-up over epoch 1 (2 steps) then cosine to zero at the last step.
    base = cfg.train.resolved_lr("none")
    assert history[0].lr == pytest.approx(base)
    assert history[1].lr == pytest.approx(0.0, abs=1e-12)
    # Only the epoch checkpoints kept and their recorded hashes: no temporary
    # files, and no resume state once the run has finished (its record says so).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        ".alexnet-01.pt.sha256", ".alexnet-02.pt.sha256", "alexnet-01.pt", "alexnet-02.pt"]
    assert RunRecord.load(run_dir).finished


def test_checkpoint_describes_itself(trained, dataset_dir):
    cfg, _, history = trained
    ckpt = load_checkpoint(history[-1].checkpoint)
    assert ckpt["class_names"] == CLASS_NAMES and ckpt["num_classes"] == 10
    assert ckpt["image_size"] == 64 and ckpt["epoch"] == 2 and ckpt["seed"] == 3
    assert tuple(ckpt["mean"]) == IMAGENET_MEAN and tuple(ckpt["std"]) == IMAGENET_STD
    assert config_from_dict(ckpt["config"]) == cfg
    assert ckpt["dataset_key"] == read_meta(dataset_dir)["key"]
    assert ckpt["train_stats"]["train_loss"] == history[-1].train_loss
    # No optimizer state in the epoch checkpoint: that lives in resume.pt.
    assert "optimizer" not in ckpt


def test_model_rebuilt_from_the_checkpoint_file_alone(trained, dataset_dir):
    """With only the file and plain torchvision: the recorded image size and
    normalisation reproduce what the pipeline's own model computes."""
    from torchvision.models import alexnet

    _, _, history = trained
    raw = torch.load(history[-1].checkpoint, map_location="cpu", weights_only=True)
    model = alexnet(num_classes=len(raw["class_names"]))
    model.load_state_dict(raw["model"])
    model.eval()
    images = torch.from_numpy(np.array(load_arrays(dataset_dir).test_images[:4]))
    x = images.permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(raw["mean"]).view(1, 3, 1, 1)) / torch.tensor(raw["std"]).view(1, 3, 1, 1)
    x = F.interpolate(x, size=(raw["image_size"],) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = model(x)
        ours = model_from_checkpoint(load_checkpoint(history[-1].checkpoint)).eval()
        transform = BatchTransform(raw["image_size"], raw["mean"], raw["std"], torch.device("cpu"), False)
        actual = ours(transform(images))
    assert expected.shape == (4, 10)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_resume_state(trained, unfinished):
    _, _, history = trained
    cfg, run_dir = unfinished
    state = torch.load(run_dir / "checkpoints" / RESUME_NAME, weights_only=True)
    assert state["epoch"] == 2 and state["config_fingerprint"] == cfg.fingerprint()
    assert state["checkpoints"] == {h["epoch"]: h["checkpoint_sha256"] for h in state["history"]} == {
        e: sha256_of(run_dir / "checkpoints" / f"alexnet-{e:02d}.pt") for e in (1, 2)}
    assert [h["epoch"] for h in state["history"]] == [h.epoch for h in history]
    assert {"optimizer", "scheduler", "history"} <= set(state)
    assert len(state["optimizer"]["state"]) > 0  # AdamW moments, needed to resume exactly


def test_finished_run_is_not_trained_again(trained, dataset_dir):
    cfg, run_dir, history = trained
    before = {p.name: (p.stat().st_mtime_ns, sha256_of(p)) for p in (run_dir / "checkpoints").iterdir()}
    again = train_run(cfg, dataset_dir, run_dir, progress=False)
    assert [dataclasses.asdict(h) for h in again] == [dataclasses.asdict(h) for h in history]
    assert {p.name: (p.stat().st_mtime_ns, sha256_of(p)) for p in (run_dir / "checkpoints").iterdir()} == before


class _Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(trained, dataset_dir, tmp_path):
    """Stop after epoch 1 (its checkpoint written), then run again: epoch 2
    must come out bit for bit as in the uninterrupted run."""
    cfg, ref_dir, ref_history = trained
    run_dir = tmp_path / "run"

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_run(cfg, dataset_dir, run_dir, on_epoch_end=stop_after_first, progress=False)
    first = run_dir / "checkpoints" / "alexnet-01.pt"
    assert not (run_dir / "checkpoints" / "alexnet-02.pt").exists()
    stamp = (first.stat().st_mtime_ns, sha256_of(first))

    epochs_run = []
    history = train_run(cfg, dataset_dir, run_dir, on_epoch_end=lambda s: epochs_run.append(s.epoch), progress=False)
    assert epochs_run == [2]  # only the missing epoch
    assert (first.stat().st_mtime_ns, sha256_of(first)) == stamp
    assert numbers(history) == numbers(ref_history)
    for epoch in (1, 2):
        ours = load_checkpoint(run_dir / "checkpoints" / f"alexnet-{epoch:02d}.pt")["model"]
        ref = load_checkpoint(ref_dir / "checkpoints" / f"alexnet-{epoch:02d}.pt")["model"]
        assert all(torch.equal(ours[k], ref[k]) for k in ref), f"epoch {epoch} weights differ"


def test_another_config_in_the_same_folder_is_refused(trained, dataset_dir):
    _, run_dir, _ = trained
    trained_lr = config_from_dict(load_checkpoint(run_dir / "checkpoints" / "alexnet-02.pt")["config"]).train.lr
    other = make_config(dataset_dir, **{"train.lr": 0.5})
    with pytest.raises(ConfigError, match=rf"a different train.lr \({trained_lr!r} there, 0.5 now\)"):
        train_run(other, dataset_dir, run_dir, progress=False)


def test_other_weights_in_the_same_file_are_another_run(dataset_dir, tmp_path):
    """--weights PATH counts by content: new weights under the same name are
    not the finished run's weights (a new default folder, or a refusal)."""
    from alexnet_pipeline.model import new_alexnet

    weights = tmp_path / "start.pt"
    torch.save(new_alexnet(1000).state_dict(), weights)
    cfg = make_config(dataset_dir, **{"model.weights": str(weights), "train.epochs": 1})
    first_fingerprint, first_default_folder = cfg.fingerprint(), cfg.run_dir("datakey")
    run_dir = tmp_path / "run"
    train_run(cfg, dataset_dir, run_dir, progress=False)
    torch.save(new_alexnet(1000).state_dict(), weights)  # other random weights, same path
    assert cfg.fingerprint() != first_fingerprint and cfg.run_dir("datakey") != first_default_folder
    with pytest.raises(ConfigError, match="other starting weights"):
        train_run(cfg, dataset_dir, run_dir, progress=False)


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a run folder that costs no disk: hard links. Damage is done
    by replacing a file (cut, forge), never by changing it in place."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def test_a_resume_state_with_the_old_rng_entry_is_still_read(trained, unfinished, dataset_dir, tmp_path):
    """resume.pt no longer holds RNG states (never restored: every epoch is
    reseeded from (seed, epoch)); one written before, with them, still resumes."""
    cfg, _, history = trained
    copy = linked_copy(unfinished[1], tmp_path / "run")
    path = copy / "checkpoints" / RESUME_NAME
    state = torch.load(path, weights_only=True)
    assert "rng" not in state
    path.unlink()  # a new file: the fixture's is a hard link to it
    torch.save({**state, "rng": {"torch": torch.get_rng_state(), "cuda": []}}, path)
    epochs_run = []
    again = train_run(cfg, dataset_dir, copy, on_epoch_end=lambda s: epochs_run.append(s.epoch), progress=False)
    assert epochs_run == [] and numbers(again) == numbers(history)


def stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file's inode, size and mtime: a file written again (always
    through a new inode) or a file added or removed shows."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def forge_marker(run_dir: Path, cfg, dataset_dir: Path) -> None:
    """A marker that claims the folder holds `cfg`'s run."""
    (run_dir / RUN_MARKER).unlink(missing_ok=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({
        "format": "alexnet-pipeline-run/1", "config": cfg.to_dict(), "config_fingerprint": cfg.fingerprint(),
        "dataset_key": read_meta(dataset_dir)["key"]}))


# What is lost or damaged in a killed run's folder before another config
# (train.lr 0.5) is pointed at it, and what the refusal then says.
LOSSES = {
    "resume.pt deleted": (["rm checkpoints/resume.pt"], "a different train.lr"),
    "resume.pt truncated": (["cut checkpoints/resume.pt"], "a different train.lr"),
    "marker deleted": (["rm " + RUN_MARKER], "a different train.lr"),
    "marker truncated": (["cut " + RUN_MARKER], "a different train.lr"),
    "marker and resume.pt deleted": (["rm " + RUN_MARKER, "rm checkpoints/resume.pt"], "a different train.lr"),
    "one checkpoint left": (["rm " + RUN_MARKER, "rm checkpoints/resume.pt", "rm checkpoints/alexnet-02.pt"],
                            "according to checkpoints/alexnet-01.pt"),
    "marker forged for the new config, resume.pt deleted": (["forge " + RUN_MARKER, "rm checkpoints/resume.pt"],
                                                             "according to checkpoints/alexnet-01.pt"),
    "nothing readable left": (["rm " + RUN_MARKER, "rm checkpoints/resume.pt", "rm checkpoints/alexnet-02.pt",
                               "cut checkpoints/alexnet-01.pt"], "none of its checkpoints can be read"),
}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_another_config_is_refused_whatever_record_was_lost(unfinished, dataset_dir, tmp_path, loss):
    """The issue's case: with resume.pt truncated or deleted, another lr into
    the same --out overwrote alexnet-01.pt and alexnet-02.pt. Every record
    (marker, resume.pt, each checkpoint's own config) is asked, so no one
    lost file lets another run in; nothing in the folder changes."""
    from alexnet_pipeline.lock import run_folder_lock
    from alexnet_pipeline.ownership import RunIdentity

    _, ref_dir = unfinished
    run_dir = linked_copy(ref_dir, tmp_path / "run")
    other = make_config(dataset_dir, **{"train.lr": 0.5})
    steps, phrase = LOSSES[loss]
    for step in steps:
        action, name = step.split(" ", 1)
        {"rm": Path.unlink, "cut": cut, "forge": lambda p: forge_marker(p.parent, other, dataset_dir)}[action](run_dir / name)
    before = stamps(run_dir)

    with pytest.raises(ConfigError, match=re.escape(phrase)) as refused:
        train_run(other, dataset_dir, run_dir, progress=False)
    assert refused.value.exit_code == 2 and str(run_dir) in str(refused.value)
    with pytest.raises(ConfigError, match=re.escape(phrase)), \
            run_folder_lock(run_dir, RunIdentity.of(other, read_meta(dataset_dir)["key"])):
        pytest.fail("the flow's lock let another config in")
    assert stamps(run_dir) == before


def test_same_config_takes_over_a_run_folder_from_before_markers(trained, dataset_dir, tmp_path):
    """A run folder written before run markers existed: its checkpoints say
    it holds this run, so the run takes it over (nothing retrained) and
    marks it."""
    from alexnet_pipeline.ownership import read_run_marker

    cfg, ref_dir, history = trained
    run_dir = linked_copy(ref_dir, tmp_path / "run")
    (run_dir / RUN_MARKER).unlink()
    checkpoints = {k: v for k, v in stamps(run_dir).items() if k.startswith("checkpoints")}
    again = train_run(cfg, dataset_dir, run_dir, progress=False)
    assert numbers(again) == numbers(history)
    assert {k: v for k, v in stamps(run_dir).items() if k.startswith("checkpoints")} == checkpoints
    assert read_run_marker(run_dir).fingerprint == cfg.fingerprint()


# Under the Prefect harness, library log lines outside a flow run make Prefect warn.
@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.train' attempted to send logs")
def test_damaged_checkpoint_is_not_resumed_from(trained, unfinished, dataset_dir, tmp_path, caplog):
    _, _, ref_history = trained
    _, ref_dir = unfinished
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    # Same size, different bytes: only the recorded SHA-256 can tell.
    path = run_dir / "checkpoints" / "alexnet-02.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    epochs_run = []

    def stop_after_first(stats):
        epochs_run.append(stats.epoch)
        raise _Interrupted  # one epoch shows where it restarted

    with caplog.at_level(logging.WARNING, logger="alexnet_pipeline.train"), pytest.raises(_Interrupted):
        train_run(trained[0], dataset_dir, run_dir, on_epoch_end=stop_after_first, progress=False)
    assert epochs_run == [1]  # trained again from the start, not from the damaged epoch 2
    assert any("alexnet-02.pt" in r.getMessage() and "restarts from epoch 1" in r.getMessage() for r in caplog.records)
    assert numbers([load_checkpoint(run_dir / "checkpoints" / "alexnet-01.pt")["train_stats"]]) == numbers(ref_history[:1])


def test_batch_larger_than_the_dataset(dataset_dir, tmp_path):
    cfg = make_config(dataset_dir, **{"train.batch_size": 11})
    with pytest.raises(ConfigError, match=r"train\.batch_size: 11 is larger than the 10 training images"):
        train_run(cfg, dataset_dir, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- schedule and transforms: small pure functions ----------------------------------------


def test_lr_schedules():
    assert [lr_factor("constant", s, 10, 0) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor("constant", s, 10, 3) for s in (0, 1, 2, 3, 9)] == [pytest.approx(1 / 3), pytest.approx(2 / 3),
                                                                        1.0, 1.0, 1.0]
    # Linear warm-up reaching 1 at the end of the warm-up steps, then cosine to 0.
    assert [lr_factor("warmup_cosine", s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor("warmup_cosine", 4, 10, 4) == 1.0
    assert lr_factor("warmup_cosine", 7, 10, 4) == pytest.approx(0.5)
    assert lr_factor("warmup_cosine", 10, 10, 4) == pytest.approx(0.0)
    assert lr_factor("warmup_cosine", 0, 10, 0) == 1.0  # no warm-up


def test_no_schedule_ignores_the_warm_up():
    """train.warmup_epochs is read by every schedule a config accepts (the
    constant schedule used to drop it silently)."""
    schedules = typing.get_args(base_type(TrainConfig.model_fields["schedule"].annotation))
    assert schedules
    for schedule in schedules:
        assert [lr_factor(schedule, s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0], schedule


def test_batch_transform_normalises_and_resizes():
    mean_image = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8).expand(2, 8, 8, 3)
    transform = BatchTransform(64, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), channels_last=False)
    out = transform(mean_image.contiguous())
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert out.abs().max() < 0.01  # the mean colour normalises to ~0
    white = transform(torch.full((1, 8, 8, 3), 255, dtype=torch.uint8))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(white[0, :, 0, 0], torch.tensor(expected))


def test_augmentation_crops_and_flips_per_image():
    images = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).view(2, 4, 4, 3)
    transform = BatchTransform(4, (0, 0, 0), (1 / 255, 1 / 255, 1 / 255), torch.device("cpu"), False)  # identity
    plain = transform(images)
    torch.testing.assert_close(plain, images.permute(0, 3, 1, 2).float())
    centre_then_flip = Augmentation(torch.tensor([[2, 2], [2, 2]]), torch.tensor([False, True]), padding=2)
    out = transform(images, centre_then_flip)
    torch.testing.assert_close(out[0], plain[0])  # offset == padding: the original image
    torch.testing.assert_close(out[1], plain[1].flip(2))
    shifted = transform(images, Augmentation(torch.tensor([[0, 2], [2, 3]]), torch.tensor([False, False]), padding=2))
    # Offset 0 in rows: two reflected rows on top (row 2, row 1), then rows 0, 1.
    torch.testing.assert_close(shifted[0, :, :, :], plain[0][:, [2, 1, 0, 1], :])
    torch.testing.assert_close(shifted[1, :, :, :], plain[1][:, :, [1, 2, 3, 2]])


def test_augmentation_depends_only_on_its_generator():
    a = Augmentation.draw(50, 4, torch.Generator().manual_seed(11))
    torch.rand(100)  # global RNG use in between changes nothing
    b = Augmentation.draw(50, 4, torch.Generator().manual_seed(11))
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.flips, b.flips)
    assert a.offsets.min() >= 0 and a.offsets.max() <= 8


def test_streamed_batches_equal_resident_ones():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 5, 5, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    keep = np.array([0, 2, 3, 5, 7, 8, 11])
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))
    resident = DeviceDataset(images, labels, keep, torch.device("cpu"))
    streamed = DeviceDataset(images, labels, keep, torch.device("cpu"), resident_limit_bytes=0)
    assert resident.resident and not streamed.resident
    batches_a, batches_b = list(resident.batches(order, 3)), list(streamed.batches(order, 3))
    assert [len(b[1]) for b in batches_a] == [3, 3, 1]
    for (ia, la, pa), (ib, lb, pb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(pa, pb)
    # The batches really are the kept images, in `order`.
    first = keep[order[:3].numpy()]
    assert torch.equal(batches_a[0][0], torch.from_numpy(images[first]))
    assert batches_a[0][1].tolist() == labels[first].tolist()


def test_optimizer_state_saved_on_a_gpu_resumes_correctly_on_the_cpu():
    """A run started on a GPU (channels_last moments, fused AdamW) and resumed
    on the CPU must take the same optimizer step as one that stayed on the
    CPU: the CPU's fused kernel would misread channels_last moments."""
    from alexnet_pipeline.resume import load_optimizer_state

    def model_and_optimizer(fused):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)

    def one_step(model, optimizer, seed):
        torch.manual_seed(seed)
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    # What a CUDA run saves: moments laid out channels_last, fused=True.
    gpu_model, gpu_optimizer = model_and_optimizer(fused=True)
    gpu_model.to(memory_format=torch.channels_last)
    one_step(gpu_model, gpu_optimizer, seed=1)
    saved = copy.deepcopy(gpu_optimizer.state_dict())  # as read back from resume.pt: shares no tensor
    assert not saved["state"][0]["exp_avg"].is_contiguous() and saved["param_groups"][0]["fused"] is True

    reference_model, reference_optimizer = model_and_optimizer(fused=None)
    reference_model.load_state_dict(gpu_model.state_dict())
    reference_state = copy.deepcopy(saved)
    reference_state["state"] = {k: {n: v.contiguous() for n, v in s.items()} for k, s in reference_state["state"].items()}
    reference_state["param_groups"] = [{**g, "fused": None} for g in reference_state["param_groups"]]
    reference_optimizer.load_state_dict(reference_state)
    resumed_model, resumed_optimizer = model_and_optimizer(fused=None)
    resumed_model.load_state_dict(gpu_model.state_dict())
    load_optimizer_state(resumed_optimizer, saved)

    assert resumed_optimizer.param_groups[0]["fused"] is None  # this device's choice, not the saved one
    assert resumed_optimizer.state[resumed_model[0].weight]["exp_avg"].is_contiguous()
    for model, optimizer in ((reference_model, reference_optimizer), (resumed_model, resumed_optimizer)):
        one_step(model, optimizer, seed=2)
    for ours, reference in zip(resumed_model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.run_folder' attempted to send logs")
def test_evaluation_leaves_out_a_checkpoint_changed_since_training(trained, tmp_path, caplog):
    """flows/evaluate.py evaluates what run_checkpoints lists: a checkpoint
    whose bytes differ from the hash training recorded is never scored."""
    from alexnet_pipeline.errors import CheckpointError
    from alexnet_pipeline.run_folder import run_checkpoints

    _, run_dir, _ = trained
    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    assert [p.name for p in run_checkpoints(copy_dir)] == ["alexnet-01.pt", "alexnet-02.pt"]
    damaged = copy_dir / "checkpoints" / "alexnet-02.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still loads, wrong numbers
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in run_checkpoints(copy_dir)] == ["alexnet-01.pt"]
    assert "Leaving out alexnet-02.pt" in caplog.text
    (copy_dir / "checkpoints" / "alexnet-01.pt").write_bytes(b"not what training wrote")
    with pytest.raises(CheckpointError, match="every checkpoint"):
        run_checkpoints(copy_dir)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_checkpoints(tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.run_folder' attempted to send logs")
def test_evaluation_warns_about_a_deleted_checkpoint(trained, tmp_path, caplog):
    """A checkpoint deleted by hand is named in a warning, not dropped from
    the report silently: below the newest epoch, and (the newest one) when
    resume.pt still names it."""
    from alexnet_pipeline.run_folder import run_checkpoints

    _, run_dir, _ = trained
    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    with caplog.at_level(logging.WARNING):
        run_checkpoints(copy_dir)
    assert "No checkpoint for epoch" not in caplog.text
    for epoch in (1, 2):
        shutil.copytree(run_dir, copy_dir, dirs_exist_ok=True)
        (copy_dir / "checkpoints" / f"alexnet-{epoch:02d}.pt").unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert [p.name for p in run_checkpoints(copy_dir)] == [f"alexnet-{3 - epoch:02d}.pt"]
        assert f"No checkpoint for epoch {epoch} in {copy_dir / 'checkpoints'} (deleted?)" in caplog.text


def test_checkpoint_writer_lets_at_most_two_epochs_wait():
    """Each pending epoch holds ~0.7 GB of host copies: on a disk slower than
    training, the third submission waits for the oldest write to finish."""
    import threading

    from alexnet_pipeline.checkpoint_writer import CheckpointWriter

    release = [threading.Event() for _ in range(3)]
    writer = CheckpointWriter(max_pending=2)
    try:
        writer.submit(release[0].wait)
        writer.submit(release[1].wait)
        third_submitted = threading.Event()
        submitter = threading.Thread(target=lambda: (writer.submit(release[2].wait), third_submitted.set()))
        submitter.start()
        assert not third_submitted.wait(0.5)  # blocked: two writes pending
        release[0].set()
        assert third_submitted.wait(5)
        release[1].set()
        release[2].set()
        submitter.join(5)
        writer.drain()
    finally:
        for event in release:
            event.set()
        writer.close()


def test_checkpoint_writer_reports_what_the_disk_gave_and_what_training_waited(trained, dataset_dir, tmp_path,
                                                                               caplog):
    """The run log's writer line is how a stalled GPU run is diagnosed: the
    bytes are the files' real sizes, and a slow write shows up as waiting."""
    import threading

    from alexnet_pipeline.checkpoint_writer import CheckpointWriter

    writer = CheckpointWriter(max_pending=1)
    release = threading.Event()
    try:
        writer.submit(lambda: (release.wait(), 1000)[1])
        threading.Timer(0.3, release.set).start()
        writer.submit(lambda: 500)  # waits for the first write: only one may be pending
        writer.drain()
    finally:
        release.set()
        writer.close()
    assert writer.bytes_written == 1500
    assert writer.waited_seconds >= 0.25
    assert writer.write_seconds >= 0.25
    line = writer.summary(2, snapshot_seconds=0.5)
    assert "1500" not in line and "0.00 GB written" in line
    assert f"training waited {writer.waited_seconds:.2f} s for it and 0.50 s taking snapshots" in line

    # A real run logs it: both epochs, every byte of their checkpoints counted.
    cfg, _, _ = trained
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="alexnet_pipeline.train"):
        history = train_run(cfg, dataset_dir, run_dir, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint writer: ")]
    assert len(lines) == 1 and lines[0].startswith("checkpoint writer: 2 epochs, ")
    reported_gb = float(lines[0].split(", ")[1].split(" GB")[0])
    checkpoints_gb = sum(Path(h.checkpoint).stat().st_size for h in history) / 1e9
    assert checkpoints_gb < reported_gb


class _Killed(BaseException):
    """Stands for SIGKILL at a point inside the writer: nothing after it runs."""


@pytest.mark.parametrize("stopped_at", ["resume-write", "commit"])
def test_epoch_commit_interrupted_between_its_files(trained, dataset_dir, tmp_path, monkeypatch, stopped_at):
    """A run stopped with epoch 2's checkpoint complete under its name but the
    resume state not yet renamed ("commit") does not train epoch 2 again; one
    stopped before the checkpoint's rename ("resume-write") does. Either way
    the results equal the uninterrupted run's. (tests/test_crash_points.py
    kills a real process at the same points.)"""
    from alexnet_pipeline import faults

    cfg, ref_dir, ref_history = trained
    run_dir = tmp_path / "run"
    real_crash_point = faults.crash_point

    def stop_there(name, number=None):
        if (name, number) == (stopped_at, 2):
            raise _Killed
        real_crash_point(name, number)

    monkeypatch.setattr(faults, "crash_point", stop_there)
    with pytest.raises(_Killed):
        train_run(cfg, dataset_dir, run_dir, progress=False)
    monkeypatch.setattr(faults, "crash_point", real_crash_point)
    checkpoints = run_dir / "checkpoints"
    assert torch.load(checkpoints / RESUME_NAME, weights_only=True)["epoch"] == 1
    assert (checkpoints / "resume.pt.next").is_file()
    committed = stopped_at == "commit"
    assert (checkpoints / "alexnet-02.pt").is_file() == committed
    before = (checkpoints / "alexnet-02.pt").stat().st_ino if committed else None

    epochs_run = []
    history = train_run(cfg, dataset_dir, run_dir, on_epoch_end=lambda s: epochs_run.append(s.epoch), progress=False)

    assert epochs_run == ([] if committed else [2])
    if committed:
        assert (checkpoints / "alexnet-02.pt").stat().st_ino == before  # not written again
    assert not (checkpoints / "resume.pt.next").exists()
    assert numbers(history) == numbers(ref_history)
    ours = load_checkpoint(checkpoints / "alexnet-02.pt")["model"]
    ref = load_checkpoint(ref_dir / "checkpoints" / "alexnet-02.pt")["model"]
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_background_writes_hold_at_most_one_snapshot_per_allowed_pending_write(dataset_dir, tmp_path, monkeypatch):
    """Each snapshot of the weights and optimizer state is ~0.7 GB (of GPU
    memory, then of host memory): with background writes (a GPU run, here
    forced on the CPU) the snapshot for epoch N+1 is taken only once there
    is room for its write, so no more than two exist at a time. Each write
    is held until the next epoch has trained, so a snapshot taken too early
    would overlap it."""
    import threading

    from alexnet_pipeline import train as train_module
    from alexnet_pipeline.checkpoint_writer import Snapshot

    lock = threading.Lock()
    live, most = [0], [0]
    trained_epochs: dict[int, threading.Event] = {e: threading.Event() for e in range(1, 6)}
    real_private, real_write, real_train_epoch = (Snapshot.private, train_module.write_epoch,
                                                  train_module.Trainer.train_epoch)

    def private(state):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        return real_private(state)

    def write(checkpoint_dir, epoch, *args):
        trained_epochs[epoch + 1].wait(10)  # until the next epoch has trained (or the last write)
        try:
            return real_write(checkpoint_dir, epoch, *args)
        finally:
            with lock:
                live[0] -= 1

    def train_epoch(self, epoch, *args, **kwargs):
        stats = real_train_epoch(self, epoch, *args, **kwargs)
        trained_epochs[epoch].set()
        return stats

    monkeypatch.setattr(train_module, "writes_in_background", lambda device: True)
    monkeypatch.setattr(Snapshot, "private", staticmethod(private))
    monkeypatch.setattr(train_module, "write_epoch", write)
    monkeypatch.setattr(train_module.Trainer, "train_epoch", train_epoch)
    trained_epochs[5].set()  # nothing follows the fourth epoch's write
    history = train_run(make_config(dataset_dir, **{"train.epochs": 4}), dataset_dir, tmp_path / "run", progress=False)
    assert most[0] == 2 and len(history) == 4


def test_background_writes_save_the_state_of_their_own_epoch(trained, unfinished, dataset_dir, tmp_path, monkeypatch):
    """The background path (a GPU's, forced on the CPU) with every write held
    until training has finished: each checkpoint and the resume state still
    hold their own epoch's weights and optimizer state, not the later
    state training went on to, and the run equals the in-place one."""
    import threading

    from alexnet_pipeline import train as train_module

    cfg, ref_dir, ref_history = trained
    training_done = threading.Event()
    real_write, real_train_run_epochs = train_module.write_epoch, cfg.train.epochs

    written_states = {}

    def held_write(*args):
        training_done.wait(30)
        written = real_write(*args)
        epoch, resume_state = args[1], args[4]
        written_states[epoch] = resume_state["optimizer"]["state"]
        return written

    def on_epoch_end(stats):
        if stats.epoch == real_train_run_epochs:
            training_done.set()

    monkeypatch.setattr(train_module, "writes_in_background", lambda device: True)
    monkeypatch.setattr(train_module, "write_epoch", held_write)
    history = train_run(cfg, dataset_dir, tmp_path / "run", on_epoch_end=on_epoch_end, progress=False)
    assert numbers(history) == numbers(ref_history)
    for epoch in range(1, real_train_run_epochs + 1):
        ours = load_checkpoint(tmp_path / "run" / "checkpoints" / f"alexnet-{epoch:02d}.pt")["model"]
        ref = load_checkpoint(ref_dir / "checkpoints" / f"alexnet-{epoch:02d}.pt")["model"]
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
    # The last epoch's resume state as written (resume.pt is gone once the
    # run has finished), against that of the in-place run stopped there.
    ours = written_states[real_train_run_epochs]
    ref = torch.load(unfinished[1] / "checkpoints" / RESUME_NAME, weights_only=True)["optimizer"]["state"]
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[i][name], ref[i][name]) for i in ref for name in ref[i])


def test_a_private_snapshot_is_unchanged_by_later_training_and_taken_to_the_host_once():
    from alexnet_pipeline.checkpoint_writer import Snapshot

    weight = torch.ones(3)
    state = {"model": {"w": weight}, "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 1e-3}]}}
    snapshot = Snapshot.private(state)
    weight.add_(1)  # training goes on
    state["optimizer"]["state"][0]["step"].add_(1)
    host = snapshot.to_host()
    assert torch.equal(host["model"]["w"], torch.ones(3))
    assert host["optimizer"]["state"][0]["step"].item() == 1.0
    assert host["optimizer"]["param_groups"] == [{"lr": 1e-3}]
    with pytest.raises(RuntimeError, match="twice"):
        snapshot.to_host()
    live = Snapshot.as_it_is(state).to_host()
    assert live["model"]["w"] is weight


def test_on_the_cpu_checkpoints_are_written_in_place_without_a_copy(trained, dataset_dir, tmp_path, monkeypatch):
    """On the CPU a copy of the training state (0.7 GB for AlexNet) would
    only add to peak memory: the state is written as it is, between epochs,
    and the checkpoints are the same as ever."""
    from alexnet_pipeline.checkpoint_writer import Snapshot

    copies = []
    monkeypatch.setattr(Snapshot, "private", staticmethod(lambda state: copies.append(state)))
    cfg, ref_dir, ref_history = trained
    history = train_run(cfg, dataset_dir, tmp_path / "run", progress=False)
    assert copies == []
    assert numbers(history) == numbers(ref_history)
    ours = load_checkpoint(tmp_path / "run" / "checkpoints" / "alexnet-02.pt")["model"]
    ref = load_checkpoint(ref_dir / "checkpoints" / "alexnet-02.pt")["model"]
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
