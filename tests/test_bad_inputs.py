"""Every bad input gets one clear error, and nothing is lost (issue 4).

Each case runs the command line's main() and checks the exit status, the
message (what was wrong, where, what to do), that stderr holds no traceback,
and that no file was created or deleted that should not be.

- Mistakes found before Prefect starts: main(argv) in this process
  (tests.conftest.run_main), which fails the test should Prefect be reached.
- Mistakes found by a stage: main(argv) in this process too, its flow on the
  test harness's Prefect server, with Prefect's log in the captured stderr.
- Two real processes: a stage's refusal on the harness's server (exit 1;
  its message spans lines between Prefect's log lines), and a run that
  completes on Prefect's temporary server, the path a user's first run takes
  (exit 0). The other exit statuses have their process-level smoke test in
  tests/README.md's table.

    pytest tests/test_bad_inputs.py              # about a minute on 2 CPUs (was 3.5)
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipeline import download as download_module
from alexnet_pipeline.cache import load_arrays, preprocess, read_meta
from alexnet_pipeline.checkpoint import save_epoch_checkpoint
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.download import ensure_cifar10
from alexnet_pipeline.errors import CheckpointError, DataError
from alexnet_pipeline.evaluate import evaluate_checkpoint
from alexnet_pipeline.model import IMAGENET_MEAN, IMAGENET_STD, new_alexnet
from tests.conftest import run_cli

CONFIG_ERROR, INPUT_ERROR = 2, 1
# Connection refused at once: the "offline" case without touching the network.
UNREACHABLE_URL = "http://127.0.0.1:9/cifar-10-python.tar.gz"


# --- helpers ---------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file (size, mtime) and folder under root, except Prefect's home
    and result storage."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in (".prefect", "prefect-storage", "cli-prefect-home"):
            continue
        stat = path.lstat()
        found[str(rel)] = ("dir",) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return found


def error_message(stderr: str) -> str:
    """The command line's own message: from 'error: ' up to the next log line."""
    start = stderr.rfind("\nerror: ")
    assert start >= 0, f"no 'error:' line in stderr:\n{stderr[-3000:]}"
    lines = stderr[start + 1:].splitlines()
    message = [lines[0]]
    for line in lines[1:]:
        if re.match(r"\d\d:\d\d:\d\d", line):
            break
        message.append(line)
    return "\n".join(message)


def assert_refused(code: int, stderr: str, exit_status: int, *phrases: str) -> str:
    assert code == exit_status, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    message = error_message(stderr)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in the message:\n{message}"
    return message


def imagefolder_args(folder: Path, *extra: str) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(folder), "--weights", "none", "--epochs", "1",
            "--batch-size", "6", "--image-size", "64", "--device", "cpu", *extra]


def cifar_args(data_dir: Path, *extra: str) -> list[str]:
    # --subset 50 (all of the small archive): no CPU time estimate before the run.
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--weights", "none", "--epochs", "1",
            "--batch-size", "10", "--image-size", "64", "--device", "cpu", "--subset", "50", *extra]


@pytest.fixture
def refused_and_unchanged(tmp_path, run_main):
    """`refused_and_unchanged(args, exit_status, *phrases, prefect=False)`:
    main(args) in this process, from tmp_path; expect the refusal with these
    phrases and tmp_path's tree unchanged. Returns the error message."""

    def check(args: list[str], exit_status: int, *phrases: str, prefect: bool = False) -> str:
        before = snapshot(tmp_path)
        message = assert_refused(*run_main(args, prefect=prefect), exit_status, *phrases)
        assert snapshot(tmp_path) == before
        return message

    return check


def offline_config(tmp_path: Path) -> Path:
    path = tmp_path / "offline.yaml"
    path.write_text(f"data:\n  url: {UNREACHABLE_URL}\n")
    return path


# --- data folder -----------------------------------------------------------------------


def test_image_folder_missing(refused_and_unchanged, tmp_path):
    refused_and_unchanged(imagefolder_args(tmp_path / "photos"), INPUT_ERROR,
                          f"image folder {tmp_path / 'photos'} does not exist", "--data-dir")


def test_image_folder_empty(refused_and_unchanged, tmp_path):
    (tmp_path / "photos").mkdir()
    refused_and_unchanged(imagefolder_args(tmp_path / "photos"), INPUT_ERROR,
                          "has no train/ folder", "train/<class>/")


def test_image_folder_not_readable(image_folder, monkeypatch):
    # Tests run as root, which ignores permissions: exercise the check through os.access.
    import alexnet_pipeline.data as data_module
    from alexnet_pipeline.data import ImageFolderSource

    monkeypatch.setattr(data_module.os, "access", lambda path, mode: Path(path) != image_folder)
    with pytest.raises(DataError, match="not readable; check its permissions"):
        ImageFolderSource(image_folder)


def test_cifar_data_folder_not_readable(tmp_path, monkeypatch):
    # Root ignores permissions, so the check is exercised through os.access.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setattr(download_module.os, "access", lambda path, mode: Path(path) != data_dir)
    with pytest.raises(DataError, match="not readable and writable.*permissions"):
        ensure_cifar10(data_dir, url=UNREACHABLE_URL, progress=False)
    assert list(data_dir.iterdir()) == []


def test_cifar_data_folder_missing_and_offline(refused_and_unchanged, tmp_path):
    data_dir = tmp_path / "data"
    args = cifar_args(data_dir, "--config", str(offline_config(tmp_path)))
    refused_and_unchanged(args, INPUT_ERROR, f"could not download CIFAR-10 from {UNREACHABLE_URL}",
                          "put cifar-10-python.tar.gz", str(data_dir.resolve()))
    assert not data_dir.exists()


def test_cifar_data_folder_empty_and_offline(refused_and_unchanged, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    args = cifar_args(data_dir, "--config", str(offline_config(tmp_path)))
    refused_and_unchanged(args, INPUT_ERROR, "could not download CIFAR-10",
                          f"into {data_dir.resolve()}", "cifar-10-batches-py/")


# --- archives (found by the download stage: Prefect runs) -------------------------------


def test_truncated_archive(refused_and_unchanged, prefect_storage, cifar_data_dir):
    archive = cifar_data_dir / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused_and_unchanged(cifar_args(cifar_data_dir, "--no-verify"), INPUT_ERROR,
                          f"cannot read {archive}", "truncated", "Delete it and run again", prefect=True)


# An archive whose checksum differs: tests/test_download.py (the library, and
# test_cli_checksum_mismatch_exits_non_zero through the command line).


def _unsafe_archive(path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"m"))
        if member.isreg():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)


@pytest.mark.parametrize("kind", ["absolute-path", "dot-dot", "symlink-outside"])
def test_archive_entry_outside_the_target_is_refused(refused_and_unchanged, prefect_storage, tmp_path, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    outside = tmp_path / "outside"
    if kind == "absolute-path":
        member = tarfile.TarInfo(str(outside / "planted.txt"))
    elif kind == "dot-dot":
        member = tarfile.TarInfo("cifar-10-batches-py/../../../outside/planted.txt")
    else:
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.type, member.linkname = tarfile.SYMTYPE, "../../../outside/planted.txt"
    _unsafe_archive(data_dir / "cifar-10-python.tar.gz", member)

    refused_and_unchanged(cifar_args(data_dir, "--no-verify"), INPUT_ERROR,
                          "refusing to extract", repr(member.name), "Use the official cifar-10-python.tar.gz",
                          prefect=True)
    assert not outside.exists()


# --- image folders ------------------------------------------------------------------------


def test_class_folder_without_images(refused_and_unchanged, tmp_path, image_folder):
    (image_folder / "train" / "bird").mkdir()
    (image_folder / "train" / "bird" / "notes.txt").write_text("not an image")
    refused_and_unchanged(imagefolder_args(image_folder), INPUT_ERROR,
                          f"class folder {image_folder / 'train' / 'bird'} has no images",
                          "add images or remove the folder")


def test_train_and_test_with_different_classes(refused_and_unchanged, tmp_path, image_folder):
    (image_folder / "test" / "ship").rename(image_folder / "test" / "boat")
    refused_and_unchanged(imagefolder_args(image_folder), INPUT_ERROR,
                          "have different classes", "only in train: ['ship']", "only in test: ['boat']",
                          "same class folders")


def _add_bad_images(folder: Path) -> list[Path]:
    corrupt = folder / "train" / "cat" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    empty = folder / "test" / "dog" / "empty.png"
    empty.write_bytes(b"")
    return [corrupt, empty]


@pytest.mark.slow
def test_corrupt_and_empty_images_are_listed(tmp_path, image_folder, cli_prefect_home):
    """A real process (the exit-1 smoke test): the preprocess stage refuses,
    on the harness's server; the message, listing the files one a line,
    is printed once, after Prefect's log, with no traceback."""
    bad = _add_bad_images(image_folder)
    before = snapshot(tmp_path)
    proc = run_cli(imagefolder_args(image_folder), cwd=tmp_path, env={"PREFECT_HOME": str(cli_prefect_home)})
    message = assert_refused(proc.returncode, proc.stderr, INPUT_ERROR,
                             f"2 image file(s) in {image_folder} could not be decoded", "--skip-bad-images")
    assert snapshot(tmp_path) == before
    for path in bad:
        assert str(path) in message
    assert proc.stderr.count("\nerror: ") == 1 and "could not be decoded" not in proc.stderr.split("\nerror: ")[0]


@pytest.mark.slow
def test_odd_images_are_converted_and_bad_ones_skipped_with_the_flag(tmp_path, image_folder, user_cache_dir):
    from PIL import Image

    rng = np.random.default_rng(0)
    cat = image_folder / "train" / "cat"
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(cat / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(cat / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(cat / "deep16.png")
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(cat / "huge.jpg", quality=80)
    (cat / "notes.txt").write_text("not an image: ignored")
    (cat / ".DS_Store").write_bytes(b"\0\1\2")
    bad = _add_bad_images(image_folder)

    # A real process on the temporary server, as a user's first run (the exit-0 smoke test).
    proc = run_cli(imagefolder_args(image_folder, "--skip-bad-images", "--out", str(tmp_path / "run")), cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    skipped = report.split("## Skipped image files", 1)[1].split("\n## ", 1)[0]
    assert all(str(path) in skipped for path in bad)
    assert "notes.txt" not in report and ".DS_Store" not in report
    (dataset_dir,) = (user_cache_dir / "preprocessed").iterdir()
    meta = read_meta(dataset_dir)
    # Train: 18 generated + gray, RGBA, 16-bit and huge (corrupt.jpg left out);
    # test: 9 (empty.png left out). Stored at 64, the image size: the huge
    # image's short side is larger.
    assert (meta["num_train"], meta["num_test"]) == (22, 9)
    assert load_arrays(dataset_dir).train_images.shape[1:] == (64, 64, 3)
    shutil.rmtree(tmp_path / "run")


# --- configuration -------------------------------------------------------------------------


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# An unknown key and malformed YAML: tests/test_config.py (test_unknown_keys_are_rejected,
# test_malformed_yaml_names_the_line, and through the command line
# test_cli_process_exit_code_and_no_traceback, test_cli_malformed_config_file).


def test_config_wrong_type(refused_and_unchanged, tmp_path, image_folder):
    config = _config_file(tmp_path, "train:\n  lr: fast\n")
    refused_and_unchanged(imagefolder_args(image_folder, "--config", str(config)), CONFIG_ERROR,
                          "train.lr: expected a number, got 'fast'")


@pytest.mark.parametrize("flags, phrase", [
    (["--lr", "0"], "train.lr: must be greater than 0, got 0.0"),
    (["--epochs", "0"], "train.epochs: must be at least 1, got 0"),
    (["--image-size", "32"], "train.image_size: 32 is too small for AlexNet; use at least 63"),
    (["--batch-size", "100"], "train.batch_size: 100 is larger than the 18 training images"),
], ids=["lr-zero", "epochs-zero", "image-size-too-small", "batch-larger-than-dataset"])
def test_config_out_of_range(refused_and_unchanged, tmp_path, image_folder, flags, phrase):
    refused_and_unchanged(imagefolder_args(image_folder, *flags), CONFIG_ERROR, phrase)


def test_batch_larger_than_cifar_training_set(run_main, prefect_storage, tmp_path, cifar_data_dir):
    """Only known once the archive is read: refused by the training stage,
    without a run folder left behind (download and preprocess results stay,
    they are valid and cached)."""
    code, stderr = run_main(cifar_args(cifar_data_dir, "--no-verify", "--batch-size", "60"), prefect=True)
    # 50 training images, 10 of them held out as the validation split.
    assert_refused(code, stderr, CONFIG_ERROR, "train.batch_size: 60 is larger than the 40 training images",
                   "smaller --batch-size")
    # Prefect's own log is part of what was searched for a traceback.
    assert "Task run 'fine-tune" in stderr and "failed (ConfigError)" in stderr, stderr[-3000:]
    assert not (tmp_path / "runs").exists()


# --- weights ---------------------------------------------------------------------------------


def test_weights_file_missing(refused_and_unchanged, tmp_path, image_folder):
    missing = tmp_path / "alexnet.pth"
    refused_and_unchanged(imagefolder_args(image_folder, "--weights", str(missing)), INPUT_ERROR,
                          f"--weights {missing}: no such file", "'imagenet' or 'none'")


def test_weights_with_wrong_shapes(refused_and_unchanged, tmp_path, image_folder, fake_weights):
    state = torch.load(fake_weights, weights_only=True)
    state["features.0.weight"] = torch.zeros(32, 3, 11, 11)
    weights = tmp_path / "resized.pth"
    torch.save(state, weights)
    refused_and_unchanged(imagefolder_args(image_folder, "--weights", str(weights)), INPUT_ERROR,
                          f"weights {weights} do not fit torchvision's AlexNet", "features.0.weight")


def test_weights_not_a_state_dict(refused_and_unchanged, tmp_path, image_folder):
    weights = tmp_path / "list.pth"
    torch.save([torch.zeros(3), torch.ones(3)], weights)
    refused_and_unchanged(imagefolder_args(image_folder, "--weights", str(weights)), INPUT_ERROR,
                          f"{weights} is not a state_dict", "torch.save(model.state_dict(), path)")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_pickle_that_would_run_code_is_refused(refused_and_unchanged, tmp_path, image_folder):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _RunsCodeWhenUnpickled(marker)}, weights)
    refused_and_unchanged(imagefolder_args(image_folder, "--weights", str(weights)), INPUT_ERROR,
                          f"refusing to load {weights}", "could run code")
    assert not marker.exists()


# --- a checkpoint that does not fit the evaluation --------------------------------------------


def _checkpoint(path: Path, class_names: list[str], image_size: int) -> Path:
    save_epoch_checkpoint(path, new_alexnet(len(class_names)).state_dict(), {
        "class_names": class_names, "num_classes": len(class_names), "image_size": image_size,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "epoch": 1,
    })
    return path


@pytest.fixture
def three_class_dataset(image_folder) -> Path:
    return preprocess(DataConfig(dataset="imagefolder", data_dir=str(image_folder)), image_size=64, progress=False)


def test_evaluating_a_checkpoint_of_another_class_count_is_refused(tmp_path, three_class_dataset):
    checkpoint = _checkpoint(tmp_path / "alexnet-01.pt", ["a", "b", "c", "d", "e"], 64)
    with pytest.raises(CheckpointError) as refused:
        evaluate_checkpoint(checkpoint, three_class_dataset, device="cpu")
    message = str(refused.value)
    assert str(checkpoint) in message and "trained on 5 classes" in message and "the test set has 3" in message
    assert "the dataset it was trained on" in message


def test_evaluating_a_checkpoint_at_another_image_size_is_refused(tmp_path, three_class_dataset):
    checkpoint = _checkpoint(tmp_path / "alexnet-01.pt", ["cat", "dog", "ship"], 96)
    with pytest.raises(CheckpointError) as refused:
        evaluate_checkpoint(checkpoint, three_class_dataset, device="cpu", image_size=64)
    message = str(refused.value)
    assert "trained on 96x96 inputs" in message and "asked for 64x64" in message and "image size 96" in message
    # At its own size it evaluates fine.
    assert evaluate_checkpoint(checkpoint, three_class_dataset, device="cpu", image_size=96).num_images == 9
