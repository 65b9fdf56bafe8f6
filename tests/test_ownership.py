"""A run writes only into its own folder (issue 5, data loss): a folder it
did not make is refused (exit status 2) before anything in it is created,
written or deleted, its .lock included; the filesystem root, the home folder,
the current folder and the runs root are never run folders; sweep folders get
the same protection. Which run a folder holds is judged from every record in
it: tests/test_train.py deletes and truncates them one by one.

    pytest tests/test_ownership.py
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from alexnet_pipeline.config import resolve_config
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.lock import LOCK_NAME, check_not_locked, run_folder_lock
from alexnet_pipeline.ownership import (
    RUN_MARKER,
    SWEEP_MARKER,
    RunIdentity,
    check_run_folder,
    claim_run_folder,
    claim_sweep_folder,
    read_run_marker,
)
from tests.conftest import run_cli


def identity(**train) -> RunIdentity:
    cfg = resolve_config("smoke", overrides={f"train.{k}": v for k, v in train.items()})
    return RunIdentity.of(cfg, "datakey")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, inode, mtime and content hash."""
    found = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = (stat.st_ino, stat.st_mtime_ns, content)
    return found


def make_files(root: Path, names: dict[str, bytes | str]) -> Path:
    for name, content in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def assert_refused_untouched(folder: Path, *phrases: str) -> ConfigError:
    """Every way into the folder refuses it, and nothing in it changed."""
    before = snapshot(folder)
    for attempt in (lambda: check_not_locked(folder), lambda: check_run_folder(folder, identity()),
                    lambda: claim_run_folder(folder, identity())):
        with pytest.raises(ConfigError) as refused:
            attempt()
    with pytest.raises(ConfigError) as refused, run_folder_lock(folder, identity()):
        pytest.fail("wrote into a folder that is not a run's")
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert str(folder) in message and "--out" in message  # where, and what to do
    for phrase in phrases:
        assert phrase in message, message
    assert snapshot(folder) == before
    return refused.value


FOREIGN = {
    "the user's report files": {"accuracy.csv": "mine\n", "report.md": "# my notes\n"},
    "another program's lock": {LOCK_NAME: "held by someone else\n"},
    "other files": {"notes.txt": "x", "photos/a.jpg": b"\xff\xd8"},
    "a checkpoint beside other files": {"checkpoints/alexnet-01.pt": b"not ours", "notes.txt": "x"},
    "an unreadable checkpoint only": {"checkpoints/alexnet-01.pt": b"truncated"},
    "a marker beside other files": {RUN_MARKER: "{}", "notes.txt": "x"},
    "a marker and a stranger in checkpoints/": {RUN_MARKER: "{}", "checkpoints/data.bin": b"x"},
    "a damaged marker and report files": {RUN_MARKER: '{"format": "alexnet-pip', "report.md": "x"},
    "a sweep folder": {SWEEP_MARKER: "{}", "sweep.csv": "trial\n"},
}


@pytest.mark.parametrize("content", list(FOREIGN), ids=list(FOREIGN))
def test_existing_folder_that_is_not_a_runs_is_refused_untouched(tmp_path, content):
    folder = make_files(tmp_path / "mine", FOREIGN[content])
    assert_refused_untouched(folder, "nothing was written")


def test_a_lock_that_is_not_ours_is_never_touched(tmp_path):
    """The issue's --out ~: another program holds <folder>/.lock. The refusal
    is about the folder (exit 2), not 'another run is writing' (3), and that
    lock file is neither written nor deleted."""
    folder = make_files(tmp_path / "mine", {LOCK_NAME: "pid 1\n", "accuracy.csv": "mine\n"})
    fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_refused_untouched(folder, f"no {RUN_MARKER}", "accuracy.csv")
    finally:
        os.close(fd)


@pytest.mark.parametrize("which", ["home", "cwd", "runs root", "root"])
def test_root_home_cwd_and_runs_root_are_never_run_folders(tmp_path, monkeypatch, which):
    """Refused even when empty: the run would spill its files into them."""
    folder = tmp_path / "place"
    folder.mkdir()
    if which == "home":
        monkeypatch.setenv("HOME", str(folder))
        out, phrase = Path("~"), "your home folder"
    elif which == "cwd":
        monkeypatch.chdir(folder)
        out, phrase = Path("."), "the current folder"
    elif which == "runs root":
        monkeypatch.setenv("ALEXNET_PIPELINE_RUNS_ROOT", str(folder))
        out, phrase = folder, "the runs root"
    else:
        out, phrase, folder = Path("/"), "the filesystem root", None
    before = sorted(os.listdir(out.expanduser()))
    with pytest.raises(ConfigError, match=phrase) as refused, run_folder_lock(out, identity()):
        pytest.fail("took a folder that is no run's")
    with pytest.raises(ConfigError, match=phrase):
        check_not_locked(out)
    with pytest.raises(ConfigError, match=phrase):
        claim_sweep_folder(out)
    assert "leave --out out" in str(refused.value)
    assert sorted(os.listdir(out.expanduser())) == before


def test_a_run_folder_inside_a_run_folder_is_refused(tmp_path):
    outer = tmp_path / "run"
    with run_folder_lock(outer, identity()):
        (outer / "report.md").write_text("x")
    for inner in (outer / "sub", outer / "checkpoints" / "x"):
        with pytest.raises(ConfigError, match=f"is inside the run folder {outer}"), run_folder_lock(inner):
            pytest.fail("nested a run folder")
        assert not inner.exists()
    assert sorted(os.listdir(outer)) == [RUN_MARKER, "report.md"]


def test_new_or_empty_folder_is_marked_before_its_lock_and_left_as_found_when_nothing_was_written(tmp_path,
                                                                                                     monkeypatch):
    from alexnet_pipeline import lock

    real_open = os.open
    marked_first = []

    def watching_open(path, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            marked_first.append((Path(path).parent / RUN_MARKER).is_file())
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", watching_open)
    me = identity()
    new = tmp_path / "runs" / "new"
    with run_folder_lock(new, me):
        assert read_run_marker(new) == me
    assert not (tmp_path / "runs").exists()  # created by the run, nothing written: removed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError), run_folder_lock(empty, me):
        raise RuntimeError("the run failed before writing anything")
    assert empty.is_dir() and os.listdir(empty) == []  # the user's folder stays, as it was
    assert marked_first == [True, True]

    with run_folder_lock(new, me):
        (new / "accuracy.csv").write_text("epoch\n")
    marker = json.loads((new / RUN_MARKER).read_text())
    assert marker["config_fingerprint"] == me.fingerprint and marker["dataset_key"] == "datakey"
    assert marker["config"] == me.config and marker["format"] == "alexnet-pipeline-run/1"
    # The same run again takes it; another config is refused naming the difference.
    with run_folder_lock(new, me):
        pass
    with pytest.raises(ConfigError, match=rf"holds a run with a different train.lr \(0.0003 there, 0.5 now\), "
                                          rf"according to {RUN_MARKER}"), run_folder_lock(new, identity(lr=0.5)):
        pytest.fail("took a folder of another run")
    assert sorted(os.listdir(new)) == [RUN_MARKER, "accuracy.csv"]


def test_temporary_and_nfs_files_do_not_make_a_run_folder_foreign(tmp_path):
    run_dir = tmp_path / "run"
    claim_run_folder(run_dir, identity())
    make_files(run_dir, {".accuracy.csv.k2j4_x9a.partial": "x", ".nfs000000000123": "x",
                         "checkpoints/.alexnet-02.pt.abc123.partial": b"x", "checkpoints/.nfs0042": b"x"})
    assert check_run_folder(run_dir, identity()) == "marked"


def test_identity_without_fingerprint_compares_the_recorded_config():
    """Checkpoints from before fingerprints were recorded still refuse another
    config, and where the data sits does not count."""
    me = identity()
    old = RunIdentity({**me.config, "data": {**me.config["data"], "data_dir": "/elsewhere"}}, "datakey")
    assert not old.differs_from(me)
    assert RunIdentity(identity(lr=0.5).config, "datakey").differs_from(me)
    assert RunIdentity(me.config, "otherdata").differs_from(me)


# --- sweep folders --------------------------------------------------------------------------


def test_sweep_folder_holds_its_files_and_its_trials_run_folders(tmp_path):
    sweep_dir = tmp_path / "sweeps" / "s"
    claim_sweep_folder(sweep_dir)
    assert json.loads((sweep_dir / SWEEP_MARKER).read_text())["format"] == "alexnet-pipeline-sweep/1"
    with run_folder_lock(sweep_dir / "trial-01", identity()):  # a trial, as full_run takes it
        (sweep_dir / "trial-01" / "accuracy.csv").write_text("epoch\n")
    (sweep_dir / "sweep.csv").write_text("trial\n")
    claim_sweep_folder(sweep_dir)  # the same sweep again: its trials resume

    with pytest.raises(ConfigError, match="is a sweep folder"), run_folder_lock(sweep_dir):
        pytest.fail("a run took the sweep folder")
    with pytest.raises(ConfigError, match="is a run folder"):
        claim_sweep_folder(sweep_dir / "trial-01")
    (sweep_dir / "notes.txt").write_text("mine")
    before = snapshot(sweep_dir)
    with pytest.raises(ConfigError, match=r"is a sweep folder but also holds notes\.txt"):
        claim_sweep_folder(sweep_dir)
    assert snapshot(sweep_dir) == before


def test_sweep_folder_from_before_markers_is_taken_over_and_a_foreign_one_refused(tmp_path):
    old = make_files(tmp_path / "old", {"sweep.csv": "trial\n", "trial-01/checkpoints/alexnet-01.pt": b"x",
                                        "trial-02/.alexnet-run.json": "{}"})
    claim_sweep_folder(old)
    assert (old / SWEEP_MARKER).is_file()
    for content in ({"sweep.csv": "mine\n"}, {"sweep.csv": "x", "trial-01/notes.txt": "x"}, {"a.txt": "x"}):
        foreign = make_files(tmp_path / f"foreign-{len(list(tmp_path.iterdir()))}", content)
        before = snapshot(foreign)
        with pytest.raises(ConfigError, match="--out"):
            claim_sweep_folder(foreign)
        assert snapshot(foreign) == before


def test_sweep_flow_refuses_a_folder_it_did_not_make_before_any_trial(prefect_storage, tmp_path):
    from flows.sweep import sweep

    folder = make_files(tmp_path / "mine", {"sweep.csv": "my own table\n", "sweep.png": b"\x89PNG"})
    before = snapshot(folder)
    with pytest.raises(ConfigError, match=f"no {re.escape(SWEEP_MARKER)}"):
        sweep(trials=[{"preset": "smoke"}], out=str(folder), deployment="no-such/deployment")
    assert snapshot(folder) == before


# --- the flows and the command line -------------------------------------------------------


def test_full_run_refuses_a_folder_it_did_not_make(prefect_storage, image_folder, tmp_path):
    """A deployment calls the flow without the command line's early check."""
    from flows.full_run import full_run

    folder = make_files(tmp_path / "mine", {"accuracy.csv": "mine\n", "report.md": "# mine\n",
                                            LOCK_NAME: "not ours\n"})
    before = snapshot(folder)
    with pytest.raises(ConfigError, match=f"no {re.escape(RUN_MARKER)}"):
        full_run(dataset="imagefolder", data_dir=str(image_folder), weights="none", epochs=1, batch_size=6,
                 image_size=64, device="cpu", out=str(folder))
    assert snapshot(folder) == before


CLI_ARGS = ["--dataset", "imagefolder", "--weights", "none", "--epochs", "1", "--batch-size", "6",
            "--image-size", "64", "--device", "cpu"]


@pytest.mark.slow
def test_cli_refuses_a_folder_it_did_not_make_before_any_work(tmp_path, image_folder, user_cache_dir):
    """A real process: the exit-2 smoke test of the command line (refused
    before Prefect starts, no traceback)."""
    folder = make_files(tmp_path / "mine", {"accuracy.csv": "mine\n", "report.md": "# mine\n", LOCK_NAME: "x"})
    before = snapshot(folder)
    proc = run_cli([*CLI_ARGS, "--data-dir", str(image_folder), "--out", str(folder)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: out: " in proc.stderr and f"no {RUN_MARKER}" in proc.stderr
    assert snapshot(folder) == before
    assert not user_cache_dir.exists() and not (image_folder / "preprocessed").exists()  # refused before any work started


def test_cli_refuses_the_home_folder_before_any_work(tmp_path, image_folder, monkeypatch, run_main, user_cache_dir):
    folder = make_files(tmp_path / "mine", {"accuracy.csv": "mine\n", "report.md": "# mine\n", LOCK_NAME: "x"})
    before = snapshot(folder)
    monkeypatch.setenv("HOME", str(folder))
    code, stderr = run_main([*CLI_ARGS, "--data-dir", str(image_folder), "--out", "~"])
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "error: out: " in stderr and "your home folder" in stderr
    assert snapshot(folder) == before
    assert not user_cache_dir.exists() and not (image_folder / "preprocessed").exists()  # refused before any work started
