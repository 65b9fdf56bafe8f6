"""What a command imports before it answers (issue 22): --help, a bad flag
and every refusal that needs no data come before torch, torchvision,
Prefect, pandas and matplotlib are imported, which cost seconds. Asserted
on the modules a real `python flows/COMMAND.py` process imported (its
`-X importtime` list), never on a time: benchmarks/overhead.py measures how
long they take."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

HEAVY = {"torch", "torchvision", "prefect", "pandas", "matplotlib"}


def imported_by(command: str, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime flows/COMMAND.py ARGS`; (its result, the
    top-level packages it imported)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(cwd / ".prefect")}
    done = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "flows" / f"{command}.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    packages = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    return done, packages


@pytest.mark.parametrize("command", ["full_run", "evaluate", "sweep", "predict", "export"])
def test_help_imports_nothing_heavy(command, tmp_path):
    done, packages = imported_by(command, "--help", cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-3000:]
    assert not packages & HEAVY, sorted(packages & HEAVY)
    assert not (tmp_path / ".prefect").exists()


@pytest.mark.parametrize(("command", "args", "status", "says"), [
    ("full_run", ["--epochs", "0"], 2, "error: train.epochs: must be at least 1, got 0"),
    ("full_run", ["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    ("full_run", ["--preset", "smoke", "--dataset", "imagefolder", "--data-dir", "missing"], 1, "error: "),
    ("evaluate", ["missing-run"], 1, "error: run folder missing-run does not exist"),
    ("sweep", ["--grid", "lr"], 2, "expected KEY=VALUE"),
])
def test_a_refusal_that_needs_no_data_imports_nothing_heavy(command, args, status, says, tmp_path):
    done, packages = imported_by(command, *args, cwd=tmp_path)
    assert done.returncode == status, done.stderr[-3000:]
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not packages & HEAVY, sorted(packages & HEAVY)
    assert not (tmp_path / ".prefect").exists()  # no server was started


def test_a_foreign_out_folder_is_refused_before_anything_heavy(tmp_path, cifar_data_dir):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    done, packages = imported_by("full_run", "--preset", "smoke", "--weights", "none", "--no-verify",
                                 "--data-dir", str(cifar_data_dir), "--out", str(foreign), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: " in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not packages & HEAVY, sorted(packages & HEAVY)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
