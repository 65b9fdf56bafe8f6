"""Input files that are not what they should be (issue 24): FIFOs, devices
and folders where a file is expected; weights that load but hold NaN or
integers; preprocessed cache entries altered on disk; Prefect result
records that are not files. Each is one `error:` line with its exit status,
a rebuild, or one warning: never a hang or a traceback.

A test that opens a FIFO would hang for ever if the code under test waited
on it: the `fifo` fixture opens every FIFO it made for writing after a
deadline (and at the end), which lets a blocked reader go on to a wrong
result that fails the test instead."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_pipeline.cache import entry_problem, load_arrays, preprocess
from alexnet_pipeline.config import DataConfig, resolve_config
from alexnet_pipeline.errors import CheckpointError, ConfigError, DataError
from alexnet_pipeline.files import read_regular_file
from tests.test_bad_inputs import (  # noqa: F401 - refused_and_unchanged is a fixture
    CONFIG_ERROR,
    INPUT_ERROR,
    cifar_args,
    imagefolder_args,
    refused_and_unchanged,
)

UNBLOCK_AFTER_S = 60


@pytest.fixture
def fifo():
    made: list[Path] = []
    done = threading.Event()

    def unblock():
        for path in made:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
            except OSError:
                continue
            os.close(fd)

    def watchdog():
        if not done.wait(UNBLOCK_AFTER_S):
            unblock()

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    done.set()
    unblock()


# --- special files where a regular file is expected ---------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_config_that_is_not_a_regular_file_is_refused(refused_and_unchanged, fifo, tmp_path, image_folder, kind):
    path = {"fifo": lambda: fifo(tmp_path / "config.yaml"), "device": lambda: Path("/dev/zero"),
            "folder": lambda: (tmp_path / "config.yaml").mkdir() or tmp_path / "config.yaml"}[kind]()
    name = {"fifo": "a FIFO (named pipe)", "folder": "a folder", "device": "a character device"}[kind]
    refused_and_unchanged(imagefolder_args(image_folder, "--config", str(path)), CONFIG_ERROR,
                          f"config file {path} is {name}, not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_weights_that_are_not_a_regular_file_are_refused(refused_and_unchanged, fifo, tmp_path, image_folder, kind):
    path = {"fifo": lambda: fifo(tmp_path / "alexnet.pth"), "device": lambda: Path("/dev/zero"),
            "folder": lambda: (tmp_path / "alexnet.pth").mkdir() or tmp_path / "alexnet.pth"}[kind]()
    args = [a if a != "none" else str(path) for a in imagefolder_args(image_folder)]
    refused_and_unchanged(args, INPUT_ERROR, f"--weights {path} is a", "not a regular file")


def test_cifar_archive_that_is_a_fifo_is_refused_not_replaced(refused_and_unchanged, fifo, tmp_path):
    archive = fifo(tmp_path / "data" / "cifar-10-python.tar.gz")
    refused_and_unchanged(cifar_args(tmp_path / "data"), INPUT_ERROR,
                          f"the CIFAR-10 archive {archive} is a FIFO (named pipe), not a regular file")
    assert archive.is_fifo()


def test_checkpoint_that_is_a_fifo_is_refused(fifo, tmp_path):
    from alexnet_pipeline.checkpoint import load_checkpoint

    path = fifo(tmp_path / "checkpoints" / "alexnet-01.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint .*alexnet-01\.pt is a FIFO"):
        load_checkpoint(path)


def test_reading_is_bounded_in_size(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("x" * 10)
    with pytest.raises(ConfigError, match=r"larger than 5 bytes \(10 bytes\)"):
        read_regular_file(path, "config file", ConfigError, max_bytes=5)
    assert read_regular_file(path, "config file", ConfigError, max_bytes=10) == b"x" * 10


def test_config_loading_reads_through_the_bounded_reader(fifo, tmp_path):
    with pytest.raises(ConfigError, match="is a FIFO"):
        resolve_config("default", fifo(tmp_path / "c.yaml"))


# --- weights that load but would not train -------------------------------------------------


def _doctored(fake_weights: Path, tmp_path: Path, change) -> Path:
    state = torch.load(fake_weights, weights_only=True)
    change(state)
    path = tmp_path / "doctored.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("change", "phrase"), [
    (lambda s: s["features.3.weight"].view(-1)[7].fill_(float("nan")), "'features.3.weight' holds 1 NaN or infinite"),
    (lambda s: s["classifier.1.bias"].fill_(float("inf")), "'classifier.1.bias' holds 4,096 NaN or infinite"),
    (lambda s: s.update({k: v.to(torch.int8) for k, v in s.items()}), "'features.0.weight' is int8, not floating point"),
    (lambda s: s.update({"features.0.bias": s["features.0.bias"].bool()}), "'features.0.bias' is bool"),
    (lambda s: s.update({"classifier.6.weight": torch.zeros(())}), "'classifier.6.weight' has shape ()"),
], ids=["nan", "inf", "int8", "bool", "scalar-head"])
def test_suspicious_weights_are_refused_naming_file_and_tensor(refused_and_unchanged, fake_weights, tmp_path,
                                                              image_folder, change, phrase):
    weights = _doctored(fake_weights, tmp_path, change)
    args = [a if a != "none" else str(weights) for a in imagefolder_args(image_folder)]
    refused_and_unchanged(args, INPUT_ERROR, f"weights {weights}: tensor ", phrase)


def test_good_weights_still_load(fake_weights):
    from alexnet_pipeline.model import build_alexnet

    assert build_alexnet(3, str(fake_weights)).classifier[6].out_features == 3


# --- preprocessed cache entries altered on disk -----------------------------------------------


def _shorter(path: Path) -> None:
    np.save(path, np.load(path)[:-1], allow_pickle=False)


def _labels_out_of_range(path: Path) -> None:
    labels = np.load(path)
    labels[0] = 99
    np.save(path, labels, allow_pickle=False)


DAMAGES = {
    "label-out-of-range": ("train_labels.npy", _labels_out_of_range, "labels 0..99, outside the 3 classes"),
    "negative-label": ("test_labels.npy", lambda p: np.save(p, -np.load(p) - 1), "outside the 3 classes"),
    "labels-shorter": ("train_labels.npy", _shorter, "meta.json says 18 integer labels"),
    "images-shorter": ("test_images.npy", _shorter, "meta.json says uint8 (9, 40, 40, 3)"),
    "images-float": ("train_images.npy", lambda p: np.save(p, np.load(p).astype(np.float32)), "float32"),
    "images-truncated": ("train_images.npy", lambda p: os.truncate(p, os.path.getsize(p) // 2), "train arrays unreadable"),
    "meta-count": ("meta.json", lambda p: p.write_text(p.read_text().replace('"num_train": 18', '"num_train": 20')),
                   "meta.json says uint8 (20, 40, 40, 3)"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_an_altered_cache_entry_is_refused_by_readers_and_rebuilt_by_preprocessing(image_folder, tmp_path, damage):
    data = DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    entry = preprocess(data, image_size=64, progress=False)
    original = load_arrays(entry, mmap=False)
    name, alter, phrase = DAMAGES[damage]
    alter(entry / name)

    problem = entry_problem(entry)
    assert problem and phrase in problem, problem
    with pytest.raises(DataError) as refused:
        load_arrays(entry)
    message = str(refused.value)
    assert message.startswith(f"the preprocessed data in {entry} is damaged: ") and f"delete {entry}" in message

    assert preprocess(data, image_size=64, progress=False) == entry  # the same entry, built again
    assert entry_problem(entry) is None
    rebuilt = load_arrays(entry, mmap=False)
    assert np.array_equal(rebuilt.train_labels, original.train_labels)
    assert np.array_equal(rebuilt.test_images, original.test_images)


def test_a_cached_preprocess_result_naming_an_altered_entry_is_a_miss(image_folder, tmp_path):
    """Prefect's cache hit returns the entry's path without running the
    library: the check of what it returned sends it back to be rebuilt."""
    from tasks.preprocess import still_valid

    data = DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    entry = preprocess(data, image_size=64, progress=False)
    assert still_valid(str(entry))
    _labels_out_of_range(entry / "train_labels.npy")
    assert not still_valid(str(entry))


# --- Prefect result records that are not files ----------------------------------------------


def test_a_result_record_that_is_not_a_file_is_one_warning_not_a_traceback(prefect_storage, capsys, caplog):
    """Prefect reads such a record as a cache miss, then fails to write over
    it with a ValueError and a traceback; here: one warning line while the
    run goes on, and the command's closing `warning:` line."""
    import logging

    from prefect import flow, task

    import tasks
    from flows.prefect_server import warn_unsaved_results
    from tasks.caching import across_runs

    @task(cache_policy=across_runs("test-record", 1), persist_result=True)
    def doubled(x: int) -> int:
        return 2 * x

    @flow
    def twice() -> int:
        return doubled(21)

    assert twice() == 42
    (record,) = [p for p in prefect_storage.iterdir() if p.is_file()]
    record.unlink()
    record.mkdir()
    tasks.unsaved_results.clear()
    with caplog.at_level(logging.INFO):
        assert twice() == 42  # a miss: computed again
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"could not save this result in {prefect_storage}" in w and f"{record} is not a file" in w
               for w in warnings), warnings
    capsys.readouterr()
    warn_unsaved_results()
    err = capsys.readouterr().err
    assert err.strip().startswith(f"warning: Prefect could not save 1 result(s) in {prefect_storage}")
    shutil.rmtree(record)


# --- messages that send the user the right way ----------------------------------------------


def test_an_out_folder_the_user_may_not_write_into_is_one_error_line(tmp_path, image_folder):
    """A real process, to which permissions apply (root's override dropped):
    the refusal comes before Prefect starts, and nothing is written."""
    from tests.conftest import run_python_with_permissions_enforced

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    code = ("import sys; from flows.full_run import main; sys.exit(main(sys.argv[1:]))")
    done = run_python_with_permissions_enforced(code, *imagefolder_args(image_folder, "--out", str(out)))
    assert done.returncode == CONFIG_ERROR, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"error: out: this user may not write into the run folder {out}; fix its permissions" in done.stderr
    assert list(out.iterdir()) == []


def test_evaluating_a_cifar_run_whose_data_folder_moved_says_to_pass_data_dir(prefect_storage, cifar_data_dir,
                                                                             tmp_path):
    from flows.evaluate import evaluate_latest
    from flows.full_run import full_run
    from tests.test_bad_inputs import offline_config

    run_dir = tmp_path / "run"
    full_run(config_file=str(offline_config(tmp_path)), dataset="cifar10", data_dir=str(cifar_data_dir), verify=False,
             weights="none", epochs=1, batch_size=5, subset=10, image_size=64, device="cpu", out=str(run_dir))
    moved = tmp_path / "moved-data"
    cifar_data_dir.rename(moved)
    with pytest.raises(DataError) as refused:
        evaluate_latest(run_dir=str(run_dir))
    message = str(refused.value)
    assert message.startswith(f"{run_dir} was trained on the CIFAR-10 data in {cifar_data_dir}, which no longer holds it")
    assert "--data-dir NEW_FOLDER" in message
    assert evaluate_latest(run_dir=str(run_dir), data_dir=str(moved))["epochs"] == 1
