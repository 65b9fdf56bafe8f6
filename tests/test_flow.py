"""The whole flow under Prefect's test harness (in-process), cache hits on a
re-run, and one resume after a real kill -9 through the command line.

The kill test compares the resumed run with the in-process uninterrupted run
of the same config and seed (module fixture `first_run`): the same
accuracy.csv numbers and the same final weights, bit for bit on the CPU."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from alexnet_pipeline.errors import DataError
from tests.fixtures import sha256_of

# 10 images (one per class), 2 steps per epoch, 2 epochs, 64x64.
PARAMS = {"dataset": "cifar10", "verify": False, "weights": "none", "epochs": 2, "batch_size": 5, "subset": 10,
          "image_size": 64, "device": "cpu", "seed": 11}
NUMBER_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
REQUIRED_COLUMNS = NUMBER_COLUMNS + ["epoch_seconds", "checkpoint"]
REPORT_FILES = ("accuracy.csv", "accuracy.png", "confusion.png", "report.md")
STAGES = ("download-cifar10", "preprocess", "fine-tune", "write-report")  # fine-tune evaluates each checkpoint


def stage_of(task_run_name: str) -> str:
    return next(s for s in STAGES if task_run_name.startswith(s))


def task_states(flow_state, expected: int, timeout: float = 30.0) -> list[tuple[str, str]]:
    """(stage, state name) of every task run of a flow run. Task run states
    reach the API as events, a moment after the flow returns: wait for them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            states = sorted((stage_of(r.name), r.state.name if r.state else "") for r in runs)
            done = len(states) == expected and all(r.state and r.state.is_final() for r in runs)
            if done or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def file_stamps(folder: Path, names) -> dict[str, tuple[int, str]]:
    return {name: ((folder / name).stat().st_mtime_ns, sha256_of(folder / name)) for name in names}


def storage_settings(path: Path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    return temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(path)})


@pytest.fixture(scope="module")
def first_run(prefect_harness, module_tmp, cifar_archive_dir):
    """One uninterrupted run of the flow, in-process, with its own result store."""
    from flows.full_run import full_run

    root = module_tmp("flow")
    data_dir = root / "data"
    data_dir.mkdir()
    shutil.copy(cifar_archive_dir / "cifar-10-python.tar.gz", data_dir)
    run = SimpleNamespace(root=root, data_dir=data_dir, out=root / "run", storage=root / "prefect-storage",
                          params={**PARAMS, "data_dir": str(data_dir), "out": str(root / "run")})
    with storage_settings(run.storage):
        run.state = full_run(**run.params, return_state=True)
    return run


def test_flow_runs_every_stage_and_writes_the_report(first_run):
    state = first_run.state
    assert state.is_completed(), state.message
    result = state.result()
    out = first_run.out
    assert result["run_dir"] == str(out.resolve())
    assert {name: result[name] for name in REPORT_FILES} == {name: str(out.resolve() / name) for name in REPORT_FILES}
    assert sorted(p.name for p in (out / "checkpoints").glob("alexnet-*.pt")) == ["alexnet-01.pt", "alexnet-02.pt"]

    df = pd.read_csv(out / "accuracy.csv")
    assert [c for c in REQUIRED_COLUMNS if c not in df.columns] == []
    assert df["epoch"].tolist() == [1, 2]
    assert df["checkpoint"].tolist() == [f"checkpoints/alexnet-0{e}.pt" for e in (1, 2)]  # relative to the run folder
    assert result["final_test_acc"] == df["test_acc"].iloc[-1]
    # Selected on the validation split (the default 10%), quoted on the test set.
    assert result["selected_on"] == "validation" and df["val_acc"].notna().all()
    selected = df.loc[df["epoch"] == result["best_epoch"]].iloc[0]
    assert selected["val_acc"] == df["val_acc"].max() and result["best_test_acc"] == selected["test_acc"]
    assert ((df["test_acc"] * 10).round(6) % 1 == 0).all()  # 10 test images: multiples of 10%
    for png in ("accuracy.png", "confusion.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert f"selected epoch: {result['best_epoch']}, the highest validation accuracy" in (out / "report.md").read_text()

    states = task_states(state, expected=4)
    assert states == sorted([("download-cifar10", "Completed"), ("preprocess", "Completed"), ("fine-tune", "Completed"),
                             ("write-report", "Completed")])


def test_rerun_is_all_cache_hits_and_rewrites_nothing(first_run):
    from flows.full_run import full_run

    out = first_run.out
    checkpoints = ["checkpoints/alexnet-01.pt", "checkpoints/alexnet-02.pt", "record.json"]
    before = file_stamps(out, [*checkpoints, *REPORT_FILES])
    with storage_settings(first_run.storage):
        state = full_run(**first_run.params, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == first_run.state.result()
    assert task_states(state, expected=4) == sorted([(stage, "Cached") for stage in STAGES])
    assert file_stamps(out, [*checkpoints, *REPORT_FILES]) == before


def test_new_lr_or_seed_reuses_the_prepared_data(first_run, tmp_path):
    """A sweep's trials differ in lr or seed: download and preprocess are
    cache hits (no image read again), only training and what follows run."""
    from flows.full_run import full_run

    params = {**first_run.params, "lr": 0.002, "seed": 12, "epochs": 1, "out": str(tmp_path / "run")}
    with storage_settings(first_run.storage):
        state = full_run(**params, return_state=True)
    assert state.is_completed(), state.message
    assert task_states(state, expected=4) == sorted(
        [("download-cifar10", "Cached"), ("preprocess", "Cached"), ("fine-tune", "Completed"),
         ("write-report", "Completed")])


def test_deleted_report_file_is_written_again(first_run, tmp_path):
    """A cache hit that points at a deleted file runs that task again."""
    from flows.full_run import full_run

    out = tmp_path / "copy"
    shutil.copytree(first_run.out, out)
    storage = tmp_path / "storage"
    shutil.copytree(first_run.storage, storage)
    params = {**first_run.params, "out": str(out)}
    with storage_settings(storage):
        # Another run folder: train and report run for it (training finds the
        # finished run's record there and only reads it).
        state = full_run(**params, return_state=True)
        assert state.is_completed(), state.message
        (out / "report.md").unlink()
        ckpt_before = file_stamps(out, ["checkpoints/alexnet-02.pt"])
        state = full_run(**params, return_state=True)
    assert state.is_completed(), state.message
    assert (out / "report.md").is_file()
    assert file_stamps(out, ["checkpoints/alexnet-02.pt"]) == ckpt_before
    states = task_states(state, expected=5)
    assert states.count(("write-report", "Cached")) == 1 and states.count(("write-report", "Completed")) == 1
    assert ("fine-tune", "Cached") in states


def test_pipeline_error_fails_the_flow_with_its_message(prefect_storage, cifar_data_dir, tmp_path, monkeypatch):
    import logging

    import tasks
    from flows.full_run import full_run

    # As in a run a worker started: no command line prints the error itself
    # (a test that called a main() in this process would have said otherwise).
    monkeypatch.setattr(tasks, "_command_line_prints_errors", False)

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(self.format(record))

    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        params = {**PARAMS, "verify": True, "data_dir": str(cifar_data_dir), "out": str(tmp_path / "run")}
        state = full_run(**params, return_state=True)
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    assert state.is_failed()
    with pytest.raises(DataError, match="checksum mismatch"):
        state.result()
    assert not (tmp_path / "run" / "checkpoints").exists()
    # Prefect's log says it once, on one line, without a traceback.
    mentions = [line for line in collect.lines if "checksum mismatch" in line]
    assert len(mentions) == 1 and "\n" not in mentions[0] and mentions[0].startswith("failed: checksum mismatch")
    assert not any("Traceback" in line for line in collect.lines)


def test_image_folder_flow(prefect_storage, image_folder, tmp_path, user_cache_dir):
    from flows.full_run import full_run

    out = tmp_path / "run"
    state = full_run(dataset="imagefolder", data_dir=str(image_folder), weights="none", epochs=1, batch_size=9,
                     image_size=64, device="cpu", seed=0, out=str(out), return_state=True)
    assert state.is_completed(), state.message
    df = pd.read_csv(out / "accuracy.csv")
    assert df["epoch"].tolist() == [1]
    report = (out / "report.md").read_text()
    assert "(3 classes); test images: 9;" in report
    for name in ("cat", "dog", "ship"):
        assert f"| {name} |" in report
    assert (out / "confusion.png").is_file() and (out / "checkpoints" / "alexnet-01.pt").is_file()
    # Nothing is written into the user's image folder: the cache is the pipeline's own.
    assert sorted(p.name for p in image_folder.iterdir()) == ["test", "train"]
    assert [p.name.split("-")[0] for p in (user_cache_dir / "preprocessed").iterdir()] == ["imagefolder"]
    # ... and the next run's preprocessing is a cache hit.
    again = full_run(dataset="imagefolder", data_dir=str(image_folder), weights="none", epochs=1, batch_size=9,
                     image_size=64, device="cpu", seed=0, out=str(out), return_state=True)
    assert task_states(again, expected=3) == sorted(
        [(stage, "Cached") for stage in ("preprocess", "fine-tune", "write-report")])


def test_default_run_folder_follows_config_and_data(prefect_storage, image_folder, tmp_path, monkeypatch):
    """Same command, same data: same folder (a re-run resumes there). Same
    command on changed images (a nightly retrain): a new folder, not an error."""
    from PIL import Image

    from flows.full_run import full_run

    monkeypatch.setenv("ALEXNET_PIPELINE_RUNS_ROOT", str(tmp_path / "runs"))
    params = dict(dataset="imagefolder", data_dir=str(image_folder), weights="none", epochs=1, batch_size=9,
                  image_size=64, device="cpu", seed=0)
    first = full_run(**params)
    assert Path(first["run_dir"]).parent == tmp_path / "runs"
    assert full_run(**params)["run_dir"] == first["run_dir"]
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image_folder / "train" / "cat" / "extra.png")
    second = full_run(**params)
    assert second["run_dir"] != first["run_dir"]
    assert Path(second["report.md"]).is_file() and Path(first["report.md"]).is_file()


def test_evaluate_latest_rewrites_the_report_and_refuses_other_data(first_run, tmp_path):
    from alexnet_pipeline.errors import ConfigError
    from flows.evaluate import evaluate_latest
    from tests.fixtures import make_cifar_archive

    copy = tmp_path / "run"
    shutil.copytree(first_run.out, copy)
    (copy / "accuracy.csv").unlink()
    with storage_settings(tmp_path / "storage"):
        result = evaluate_latest(run_dir=str(copy))
        ours, ref = pd.read_csv(copy / "accuracy.csv"), pd.read_csv(first_run.out / "accuracy.csv")
        pd.testing.assert_frame_equal(ours[NUMBER_COLUMNS], ref[NUMBER_COLUMNS])
        assert result["epochs"] == 2
        # The training time stays in the rewritten report's stage table.
        trained_s = ref["epoch_seconds"].sum()
        row = next(line for line in (copy / "report.md").read_text().splitlines()
                   if line.startswith("| train (recorded)"))
        assert float(row.split("|")[2]) == pytest.approx(trained_s, abs=0.1)

        other_data = tmp_path / "other-data"
        make_cifar_archive(other_data, seed=7)  # same classes, other images
        before = (copy / "report.md").read_bytes()
        with pytest.raises(ConfigError, match="not what .* was trained on"):
            evaluate_latest(run_dir=str(copy), data_dir=str(other_data))
        assert (copy / "report.md").read_bytes() == before


def test_evaluate_latest_takes_over_a_run_folder_from_before_markers_and_refuses_a_foreign_one(first_run, tmp_path):
    """Only writing needs ownership: a run folder written before run markers
    (its checkpoints say which run) is evaluated and marked; one that also
    holds a file of the user's is refused before its report is rewritten."""
    from alexnet_pipeline.errors import ConfigError
    from alexnet_pipeline.ownership import RUN_MARKER, read_run_marker
    from flows.evaluate import evaluate_latest

    old = tmp_path / "old-run"
    shutil.copytree(first_run.out, old, copy_function=os.link)  # hard links: no 0.9 GB copy
    (old / RUN_MARKER).unlink()
    (old / "report.md").unlink()
    with storage_settings(tmp_path / "storage"):
        assert evaluate_latest(run_dir=str(old))["epochs"] == 2
        assert (old / "report.md").is_file()
        assert read_run_marker(old).config["train"]["seed"] == PARAMS["seed"]

        (old / RUN_MARKER).unlink()
        (old / "notes.txt").write_text("mine")
        before = (old / "report.md").stat().st_mtime_ns
        with pytest.raises(ConfigError, match="notes.txt"):
            evaluate_latest(run_dir=str(old))
    assert (old / "report.md").stat().st_mtime_ns == before and not (old / RUN_MARKER).exists()


def test_a_run_pruned_by_hand_trains_nothing_and_its_report_keeps_every_epoch(first_run, tmp_path):
    """The issue's cases: deleting old checkpoints of a finished run and running
    the same command again retrained every epoch; evaluating what was left
    rewrote accuracy.csv with one row and called the last one left the final
    epoch. The run record keeps every epoch now."""
    from flows.evaluate import evaluate_latest
    from flows.full_run import full_run

    out = tmp_path / "run"
    shutil.copytree(first_run.out, out)
    (out / "checkpoints" / "alexnet-01.pt").unlink()
    kept = file_stamps(out, ["checkpoints/alexnet-02.pt"])
    with storage_settings(tmp_path / "storage"):
        state = full_run(**{**first_run.params, "out": str(out)}, return_state=True)
        assert state.is_completed(), state.message
        assert file_stamps(out, ["checkpoints/alexnet-02.pt"]) == kept  # nothing trained again
        ref = pd.read_csv(first_run.out / "accuracy.csv")
        pd.testing.assert_frame_equal(pd.read_csv(out / "accuracy.csv")[NUMBER_COLUMNS], ref[NUMBER_COLUMNS])

        result = evaluate_latest(run_dir=str(out))
    assert (result["epochs"], result["evaluated"]) == (2, 1)
    df = pd.read_csv(out / "accuracy.csv")
    pd.testing.assert_frame_equal(df[NUMBER_COLUMNS], ref[NUMBER_COLUMNS])
    assert df["evaluated"].tolist() == ["recorded", "now"]
    report = (out / "report.md").read_text()
    assert "| 1 (recorded) |" in report or "| 1 (selected) (recorded) |" in report
    assert "final test accuracy" in report and "at epoch 2" in report
