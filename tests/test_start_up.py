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
    ("evaluate", ["missing-run"], 1, "missing-run does not exist"),  # named absolute: error: run folder /.../missing-run
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


def servers_of(pid: int) -> list[int]:
    """Temporary servers started for process `pid` (their launcher is given its pid)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in argv and str(pid).encode() in argv:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_signal_while_the_early_server_boots_stops_the_run_and_its_server(tmp_path, cifar_data_dir):
    """The temporary server starts before Prefect is imported: SIGTERM during
    those imports ends the run as a signal always does (exit 143, one line,
    no traceback), and the server it had started is stopped, its log deleted."""
    import signal
    import time

    from tests.test_stopping import ARGS

    home = tmp_path / ".prefect"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home)}
    for harness_var in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(harness_var, None)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "full_run.py"), *ARGS, "--epochs", "1",
                                 "--data-dir", str(cifar_data_dir), "--out", str(tmp_path / "run")],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not servers_of(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.05)
        assert "Started a temporary Prefect server" not in err.read_text()  # still booting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.read_text()
    assert [line for line in text.splitlines() if line.startswith("interrupted:")], text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    deadline = time.monotonic() + 30
    while servers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not servers_of(proc.pid)
    assert not list(home.glob("temporary-server-*.log"))
