"""One run per run folder (issue 4): a second run into the same folder is
refused with a message naming the holder, and a lock whose holder was killed
is not stuck.

    pytest tests/test_lock.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_pipeline.errors import RunLockedError
from alexnet_pipeline.lock import LOCK_NAME, check_not_locked, run_folder_lock
from alexnet_pipeline.ownership import RUN_MARKER
from tests.conftest import REPO, run_cli

HOLDER = """
import sys, time
from alexnet_pipeline.lock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


class Holder:
    """Another process holding the run folder's lock, as a running pipeline does."""

    def __init__(self, run_dir: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", self.proc.stderr.read()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def holder(tmp_path):
    holders = []

    def start(run_dir: Path) -> Holder:
        holders.append(Holder(run_dir))
        return holders[-1]

    yield start
    for h in holders:
        if h.proc.poll() is None:
            h.kill()


def test_second_run_is_refused_with_the_holder_named(tmp_path, holder):
    run_dir = tmp_path / "run"
    first = holder(run_dir)

    with pytest.raises(RunLockedError) as refused, run_folder_lock(run_dir):
        pytest.fail("took a lock another process holds")

    message = str(refused.value)
    assert str(run_dir) in message
    assert f"process {first.proc.pid} on {socket.gethostname()}" in message
    assert "--out" in message  # what to do
    assert refused.value.exit_code == 3
    with pytest.raises(RunLockedError):
        check_not_locked(run_dir)


def test_lock_of_a_killed_holder_is_not_stuck(tmp_path, holder):
    run_dir = tmp_path / "run"
    first = holder(run_dir)
    first.kill()  # SIGKILL: no clean-up ran, the lock file is still there
    assert (run_dir / LOCK_NAME).exists()

    check_not_locked(run_dir)
    with run_folder_lock(run_dir) as lock_file:
        assert f'"pid": {os.getpid()}' in lock_file.read_text()


def test_lock_is_released_and_leaves_no_trace(tmp_path):
    run_dir = tmp_path / "runs" / "new"
    with run_folder_lock(run_dir):
        assert (run_dir / LOCK_NAME).is_file()
    # Nothing was written into the folders it created: they are gone again.
    assert not (tmp_path / "runs").exists()

    with run_folder_lock(run_dir):
        (run_dir / "accuracy.csv").write_text("epoch\n")
    # The run's marker stays with what the run wrote; the lock file goes.
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_MARKER, "accuracy.csv"]
    # Released: the next run takes it at once, also within the same process.
    with run_folder_lock(run_dir):
        pass


def test_check_not_locked_creates_nothing(tmp_path):
    check_not_locked(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_cli_refuses_a_second_run_into_the_same_folder(tmp_path, holder, image_folder, user_cache_dir):
    run_dir = tmp_path / "run"
    holder(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())

    proc = run_cli(["--dataset", "imagefolder", "--data-dir", str(image_folder), "--weights", "none",
                    "--epochs", "1", "--batch-size", "6", "--image-size", "64", "--device", "cpu",
                    "--out", str(run_dir)], cwd=tmp_path)

    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: another run is already writing to" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not user_cache_dir.exists() and not (image_folder / "preprocessed").exists()


def test_flow_takes_the_lock_itself(tmp_path, holder, image_folder, prefect_storage):
    """A deployment calls the flow directly, without the command line's early
    check: the flow must refuse too, before it writes anything into the run
    folder. (Data preparation, shared by every run on the data, comes first.)"""
    from flows.full_run import full_run

    run_dir = tmp_path / "run"
    holder(run_dir)
    with pytest.raises(RunLockedError):
        full_run(dataset="imagefolder", data_dir=str(image_folder), weights="none", epochs=1, batch_size=6,
                 image_size=64, device="cpu", out=str(run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_MARKER, LOCK_NAME]


def test_out_that_is_a_file_is_refused_as_configuration(tmp_path):
    from alexnet_pipeline.errors import ConfigError

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the run folder .*run.*pass another --out"), \
            run_folder_lock(tmp_path / "run"):
        pass
    assert (tmp_path / "run").read_text() == "not a folder"
