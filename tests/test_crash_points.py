"""Crash anywhere, resume with nothing lost (issue 4).

For every fault point in alexnet_pipeline.faults.POINTS the command is run
with ALEXNET_PIPELINE_CRASH_AT set, so the process SIGKILLs itself there, and
the files on disk must be those the point describes. The same command, run
again, must resume from there: the last run ends with the same accuracy.csv
numbers and the same final weights as one uninterrupted run (CPU, fixed
seed), the checkpoints that were complete at a crash are never written again,
and no partial file is ever read. Damaged checkpoints (truncated, bytes
changed) must be found by their recorded hash and redone with a warning.

    pytest tests/test_crash_points.py -m slow       # about 2 minutes on 2 CPUs (was 4)

The points are visited in the order a run meets them, each re-run armed for
the next point: one chain of 10 killed runs and a last complete one, instead
of a killed run and a complete re-run per point. Every point is still killed
at, its state checked, and resumed from (by the next run of the chain), and
any resume that went wrong shows in the state of the next point or in the
last run's numbers and weights; a failure names the point.

Every run goes through the real command line. To keep the matrix affordable,
the runs use the test harness's Prefect server (as a user would a real one,
through PREFECT_API_URL in their profile) instead of each starting the
temporary one (~8 s each); tests/test_bad_inputs.py covers the temporary-server
path. The first run "downloads" the small generated archive from a file://
URL, so the download point is reached, and the checksum check stays on.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from alexnet_pipeline import faults
from alexnet_pipeline.checkpoint import PENDING_RESUME_NAME, RESUME_NAME
from alexnet_pipeline.integrity import md5_file
from alexnet_pipeline.lock import LOCK_NAME
from alexnet_pipeline.ownership import RUN_MARKER
from alexnet_pipeline.record import RunRecord
from tests.conftest import run_cli
from tests.fixtures import sha256_of

pytestmark = pytest.mark.slow

# Three epochs: with the default retention (the selected and the last
# checkpoint) one of them is pruned, so the chain is killed while pruning too.
EPOCHS = 3
# Crash point -> the epoch N it is armed for (None: a point without a number),
# in the order one run meets them: the chain of killed runs follows it.
# Epoch 2 where resuming from epoch 1's state is the interesting part; each
# checkpoint is evaluated as soon as it is committed, so "evaluate" comes
# within epoch 2 and "prune" after the last epoch's evaluation.
CASES = {
    "download": None,
    "extract": None,
    "preprocess": None,
    "after-checkpoint": 1,
    "mid-epoch": 2,
    "checkpoint-write": 2,
    "resume-write": 2,
    "commit": 2,
    "evaluate": 2,
    "prune": 3,
    "finish": None,
    "report": None,
}
# Epoch checkpoints complete (and hash-verified) when the run is killed: the
# re-run must not rewrite them (it may prune them, by retention).
KEPT = {"mid-epoch": {1}, "checkpoint-write": {1}, "resume-write": {1}, "commit": {1, 2}, "after-checkpoint": {1},
        "evaluate": {1, 2}, "prune": {1, 2, 3}, "finish": {1, 2, 3}, "report": {1, 2, 3}}
NUMBERS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr"]


def test_every_fault_point_has_a_crash_test():
    assert set(CASES) == set(faults.POINTS)


def test_the_chain_meets_the_points_in_the_order_a_run_does():
    """Data preparation, then epoch by epoch, then evaluation and the report;
    within a stage, the order of faults.POINTS."""
    def when(point: str) -> tuple[int, int]:
        stage = 0 if point in ("download", "extract", "preprocess") else EPOCHS + 1 if point in ("finish", "report") \
            else CASES[point]
        return stage, list(faults.POINTS).index(point)

    assert list(CASES) == sorted(CASES, key=when)


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_home(prefect_harness, module_tmp) -> Path:
    """A PREFECT_HOME for this module's runs whose profile points at the test
    harness's server: no temporary server per run (~8 s each), and a killed
    run leaves no orphaned server behind. One result store for the module:
    cache keys include each test's own data and run folders."""
    from prefect.settings import PREFECT_API_URL

    home = module_tmp("prefect-home")
    (home / "profiles.toml").write_text(
        f'active = "default"\n\n[profiles.default]\nPREFECT_API_URL = "{PREFECT_API_URL.value()}"\n')
    return home


@pytest.fixture(scope="module")
def run_config(cifar_archive_dir, module_tmp) -> Path:
    """A --config that fetches the small archive from a file:// URL, with its
    real MD5, so each run goes through download and verification."""
    archive = cifar_archive_dir / "cifar-10-python.tar.gz"
    config = module_tmp("config") / "crash.yaml"
    config.write_text(f"data:\n  url: {archive.as_uri()}\n  md5: {md5_file(archive)}\n")
    return config


class Pipeline:
    """The one command of this module, run into `root`/data and `root`/run."""

    def __init__(self, root: Path, config: Path, prefect_home: Path):
        self.root, self.config, self.prefect_home = root, config, prefect_home
        self.data, self.out = root / "data", root / "run"

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def run(self, crash_at: str | None = None, out: Path | None = None) -> subprocess.CompletedProcess:
        env = {"PREFECT_HOME": str(self.prefect_home)}
        if crash_at:
            env[faults.ENV_VAR] = crash_at
        else:
            env[faults.ENV_VAR] = ""
        args = ["--config", str(self.config), "--dataset", "cifar10", "--data-dir", str(self.data),
                "--weights", "none", "--epochs", str(EPOCHS), "--batch-size", "25", "--lr", "0.001",
                "--image-size", "64", "--device", "cpu", "--seed", "0", "--out", str(out or self.out)]
        return run_cli(args, cwd=self.root, env=env)

    def complete(self, out: Path | None = None) -> subprocess.CompletedProcess:
        proc = self.run(out=out)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        return proc

    def killed_at(self, point: str) -> subprocess.CompletedProcess:
        proc = self.run(crash_at=point)
        assert proc.returncode == -signal.SIGKILL, (
            f"the run was not killed at {point} (exit status {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
        return proc


@pytest.fixture(scope="module")
def baseline(module_tmp, run_config, prefect_home) -> Path:
    """One uninterrupted run: what every crashed-and-resumed run must match."""
    pipeline = Pipeline(module_tmp("baseline"), run_config, prefect_home)
    pipeline.complete()
    # Nothing written outside --out, the data folder (with its cache) and Prefect's home.
    assert sorted(p.name for p in pipeline.root.iterdir()) == ["data", "run"]
    assert sorted(p.name for p in pipeline.data.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz",
                                                                "preprocessed"]
    return pipeline.out


@pytest.fixture
def pipeline(tmp_path, run_config, prefect_home):
    p = Pipeline(tmp_path, run_config, prefect_home)
    yield p
    # Each run folder holds ~0.7 GB of checkpoints; do not keep them around.
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    shutil.rmtree(tmp_path / "copy", ignore_errors=True)


# --- checks -------------------------------------------------------------------------


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"alexnet-{EPOCHS:02d}.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_results(run_dir: Path, baseline_dir: Path) -> None:
    got, expected = pd.read_csv(run_dir / "accuracy.csv"), pd.read_csv(baseline_dir / "accuracy.csv")
    pd.testing.assert_frame_equal(got[NUMBERS], expected[NUMBERS], check_exact=True)
    assert [Path(p).name for p in got["checkpoint"]] == [Path(p).name for p in expected["checkpoint"]]
    got_weights, expected_weights = final_weights(run_dir), final_weights(baseline_dir)
    assert got_weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert torch.equal(got_weights[name], tensor), f"final weights differ in {name}"
    for name in ("accuracy.png", "confusion.png", "report.md"):
        assert (run_dir / name).is_file()


def partial_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.partial")) if folder.exists() else []


def file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def resume_epoch(checkpoint_dir: Path) -> int:
    return torch.load(checkpoint_dir / RESUME_NAME, map_location="cpu", weights_only=True)["epoch"]


def assert_killed_state(point: str, p: Pipeline) -> None:
    """Evidence that the process died where it was told to, in the state the
    point describes (and that it held the run folder's lock when it died)."""
    ckpt = p.checkpoints
    if point in ("download", "extract", "preprocess"):
        # Data preparation (shared by all runs on the data) precedes the run
        # folder: nothing is written there yet, so there is nothing to lock.
        assert not p.out.exists()
    else:
        assert (p.out / LOCK_NAME).exists(), "the killed run did not hold the run folder's lock"
        assert (p.out / RUN_MARKER).is_file(), "the killed run's folder does not say it is a run's"
    if point == "download":
        assert not (p.data / "cifar-10-python.tar.gz").exists()
    elif point == "extract":
        assert (p.data / "cifar-10-python.tar.gz").is_file()
        assert not (p.data / "cifar-10-batches-py").exists()
    elif point == "preprocess":
        assert (p.data / "cifar-10-batches-py").is_dir()
        cache = p.data / "preprocessed"
        assert partial_files(cache) and not [d for d in cache.iterdir() if not d.name.startswith(".")]
    elif point == "mid-epoch":
        assert (ckpt / "alexnet-01.pt").is_file() and not (ckpt / "alexnet-02.pt").exists()
        assert resume_epoch(ckpt) == 1
    elif point == "checkpoint-write":
        assert [f.name.startswith(".alexnet-02.pt.") for f in partial_files(ckpt)] == [True]
        assert not (ckpt / "alexnet-02.pt").exists()
    elif point == "resume-write":
        assert [f.name.startswith(".alexnet-02.pt.") for f in partial_files(ckpt)] == [True]
        assert not (ckpt / "alexnet-02.pt").exists() and (ckpt / PENDING_RESUME_NAME).is_file()
        assert resume_epoch(ckpt) == 1
    elif point == "commit":
        assert (ckpt / "alexnet-02.pt").is_file() and (ckpt / PENDING_RESUME_NAME).is_file()
        assert partial_files(ckpt) == [] and resume_epoch(ckpt) == 1
    elif point == "after-checkpoint":
        assert (ckpt / "alexnet-01.pt").is_file() and not (ckpt / "alexnet-02.pt").exists()
        assert resume_epoch(ckpt) == 1
    elif point == "evaluate":
        assert resume_epoch(ckpt) == 2 and not (p.out / "accuracy.csv").exists()
        assert RunRecord.load(p.out).evaluated == {1}  # epoch 2 committed, not yet evaluated
    elif point == "prune":
        record = RunRecord.load(p.out)
        assert record.evaluated == {1, 2, 3} and not record.finished and resume_epoch(ckpt) == 3
        assert {e for e in (1, 2, 3) if (ckpt / f"alexnet-{e:02d}.pt").exists()} >= set(record.kept)
    elif point == "finish":
        assert RunRecord.load(p.out).finished and (ckpt / RESUME_NAME).is_file()
        assert not (p.out / "accuracy.csv").exists()
    elif point == "report":
        assert (p.out / "accuracy.csv").is_file() and not (p.out / "report.md").exists()
    else:
        raise AssertionError(f"no expectations written for crash point {point}")


# --- the matrix -------------------------------------------------------------------------


def test_killed_anywhere_the_run_resumes_to_the_same_result(pipeline, baseline):
    """Each run of the same command is killed at the next point; the last
    one completes. A checkpoint complete at a crash keeps its inode and
    mtime to the end (the epoch was not trained again)."""
    kept: dict[int, tuple[str, tuple[int, int]]] = {}  # epoch -> (the point after which it was complete, identity)
    prepared = False  # download and preprocess finished by an earlier run
    for point in CASES:
        armed = point if CASES[point] is None else f"{point}:{CASES[point]}"
        proc = pipeline.killed_at(armed)
        assert_killed_state(point, pipeline)
        if prepared:
            assert_data_stages_cached(proc, f"the run killed at {point}")
        prepared = prepared or KEPT.get(point) is not None
        for epoch in KEPT.get(point, ()):
            path = pipeline.checkpoints / f"alexnet-{epoch:02d}.pt"
            if not path.exists():  # pruned by retention after its evaluation
                assert epoch in RunRecord.load(pipeline.out).evaluated, f"{path.name} is gone but was never evaluated"
                continue
            since, first = kept.setdefault(epoch, (point, file_identity(path)))
            assert file_identity(path) == first, (f"alexnet-{epoch:02d}.pt, complete when the run was killed at "
                                                  f"{since}, was written again by the run killed at {point}")

    assert_data_stages_cached(pipeline.complete(), "the completing run")

    assert_same_results(pipeline.out, baseline)
    record = RunRecord.load(pipeline.out)
    on_disk = {e for e in kept if (pipeline.checkpoints / f"alexnet-{e:02d}.pt").exists()}
    assert on_disk == set(record.kept) == {record.selected_epoch, EPOCHS}  # retention: the selected and the last
    for epoch in on_disk:
        since, identity = kept[epoch]
        assert file_identity(pipeline.checkpoints / f"alexnet-{epoch:02d}.pt") == identity, (
            f"alexnet-{epoch:02d}.pt was complete when the run was killed at {since} but was written again"
        )
    assert sorted(kept) == [1, 2, 3]
    assert not (pipeline.checkpoints / RESUME_NAME).exists()
    assert partial_files(pipeline.checkpoints) == [] and not (pipeline.checkpoints / PENDING_RESUME_NAME).exists()
    assert not (pipeline.out / LOCK_NAME).exists(), "the finished run left its lock file behind"


def assert_data_stages_cached(proc, which: str) -> None:
    """A run after a crash does not download or preprocess again: both tasks
    are cache hits in its log."""
    log = (proc.stdout + proc.stderr).splitlines()
    for stage in ("download-cifar10", "preprocess"):
        assert any(f"Task run '{stage}-" in line and "Cached" in line for line in log), (
            f"{stage} was not a cache hit in {which}:\n" + "\n".join(log[-40:]))


# --- damaged checkpoints ----------------------------------------------------------------------


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip_bytes(path: Path) -> None:
    """Change 64 bytes in the middle (inside the weights): torch.load still
    reads such a file without complaint, only the hash tells."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_damaged_checkpoints_are_found_by_hash_and_redone(pipeline, baseline):
    # A copy of the uninterrupted run's folder, on the same data, whose last
    # checkpoint (kept: the model a user takes) was then cut short. At its new
    # path the copy has no cached training result; its resume state is gone
    # (the run had finished), so the run record's hash finds the damage and
    # training starts again to make the file again.
    out = pipeline.root / "copy"
    shutil.copytree(baseline, out)
    last = out / "checkpoints" / f"alexnet-{EPOCHS:02d}.pt"
    recorded = RunRecord.load(out).kept[EPOCHS]
    truncate(last)
    pipeline.data = baseline.parent / "data"
    pipeline.out = out

    proc = pipeline.complete()

    assert "does not match the hash recorded" in proc.stderr and last.name in proc.stderr
    assert_same_results(out, baseline)
    redone = RunRecord.load(out).kept[EPOCHS]
    assert sha256_of(last) == redone != recorded

    # The run is finished and every task cached; now bytes change inside a
    # checkpoint (same size). The cached training result must not be trusted.
    flip_bytes(last)
    proc = pipeline.complete()

    assert "does not match the hash recorded" in proc.stderr
    assert_same_results(out, baseline)
    assert sha256_of(last) == RunRecord.load(out).kept[EPOCHS]
    redone_weights = torch.load(last, weights_only=True)["model"]
    for name, tensor in final_weights(baseline).items():
        assert torch.equal(redone_weights[name], tensor), f"redone final weights differ in {name}"