"""Stopping a run from outside (issue: "Stopping"): signals a supervisor
sends, a Prefect server that goes away, result storage that cannot be written.

Real processes and real signals: `python flows/full_run.py` in its own
process group, signalled once its first epoch is complete. Each stop must
take seconds, print one `interrupted:` or `error:` line and no traceback,
exit with its own status, leave nothing half-written and the run folder
resumable. Bounds on time are generous deadlines for the stop to happen
(the stops take 0.1-3 s here; the command lines' own deadline is 10 s).

    pytest tests/test_stopping.py
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from alexnet_pipeline.lock import check_not_locked
from flows.interrupt import STOP_DEADLINE_S
from tests.conftest import REPO, run_cli

# 10 images, 2 steps per epoch, 64x64: an epoch takes seconds on a CPU; 40
# epochs keep the run busy until it is signalled.
ARGS = ["--dataset", "cifar10", "--no-verify", "--weights", "none", "--batch-size", "5", "--subset", "10",
        "--image-size", "64", "--device", "cpu", "--seed", "3"]
# A deadline, not a measurement: the stops take 0.1-3 s here, and a command
# line ends itself STOP_DEADLINE_S (10 s) after a signal whatever hangs.
STOP_WITHIN_S = 6 * STOP_DEADLINE_S


class Run:
    """`python flows/full_run.py` in its own process group, output in a file."""

    def __init__(self, tmp_path: Path, data_dir: Path, env: dict[str, str] | None = None, epochs: int = 40):
        self.out = tmp_path / "run"
        self.args = [*ARGS, "--epochs", str(epochs), "--data-dir", str(data_dir), "--out", str(self.out)]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / ".prefect")}
        for harness_var in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
            self.env.pop(harness_var, None)  # a temporary server, as a user gets, unless env says
        self.env.update(env or {})
        self.log = tmp_path / f"stderr-{uuid.uuid4().hex[:6]}.txt"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Run:
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "full_run.py"), *self.args],
                                         cwd=self.out.parent, env=self.env, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_epoch_1(self, timeout: float = 300) -> None:
        """Until epoch 1 is complete: resume.pt is renamed into place last."""
        deadline = time.monotonic() + timeout
        while not (self.out / "checkpoints" / "resume.pt").exists():
            assert self.proc.poll() is None, f"the run ended before epoch 1:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, "no epoch within the time limit"
            time.sleep(0.2)

    def wait_for_text(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert time.monotonic() < deadline, f"{text!r} not printed:\n{self.stderr()[-3000:]}"
            time.sleep(0.05)

    def wait(self, timeout: float = 120) -> float:
        """Seconds until the process ended; fails after `timeout`."""
        started = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run had not ended {timeout:.0f} s later:\n{self.stderr()[-3000:]}")
        return time.monotonic() - started

    def server_pid(self) -> int:
        found = re.search(r"temporary Prefect server on \S+ for this run \(pid (\d+)\)", self.stderr())
        assert found, self.stderr()[-3000:]
        return int(found.group(1))

    def flow_run_id(self) -> str:
        found = re.search(r"/runs/flow-run/([0-9a-f-]{36})", self.stderr())
        assert found, self.stderr()[-3000:]
        return found.group(1)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def runs():
    started: list[Run] = []
    extra_pids: list[int] = []

    def make(*args, **kwargs) -> Run:
        run = Run(*args, **kwargs)
        started.append(run)
        return run

    make.also_kill = extra_pids.append
    yield make
    for run in started:
        run.kill()
    for pid in extra_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def wait_until_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_stopped_cleanly(run: Run, status: int, first_word: str) -> None:
    """The exit status, one `first_word:` line and no traceback, the lock
    released, no temporary file left, epoch 1 intact."""
    import torch

    from tests.fixtures import sha256_of

    stderr = run.stderr()
    assert run.proc.returncode == status, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"{first_word}:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    check_not_locked(run.out)
    checkpoints = run.out / "checkpoints"
    assert not [p.name for p in checkpoints.iterdir() if p.name.endswith(".partial")]
    recorded = torch.load(checkpoints / "resume.pt", weights_only=True)["checkpoints"]
    assert recorded and all(sha256_of(checkpoints / f"alexnet-{e:02d}.pt") == h for e, h in recorded.items())


def states_in_database(prefect_home: Path, flow_run_id: str) -> tuple[str, list[str]]:
    """The flow run's state and its task runs' states, as the temporary
    server recorded them in PREFECT_HOME's database."""
    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as db:
        flow_state = db.execute("select state_name from flow_run where id = ?", (flow_run_id,)).fetchone()[0]
        tasks = [r[0] for r in db.execute("select state_name from task_run where flow_run_id = ?", (flow_run_id,))]
    return flow_state, tasks


# --- signals ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_in_seconds_and_the_run_resumes(runs, cifar_data_dir, tmp_path):
    """What systemd, `docker stop` or a Kubernetes eviction sends: SIGTERM to
    every process of the group. The temporary server, in a session of its
    own, is not hit: it is there to record the run as Crashed, then stopped.
    The same command then resumes after epoch 1."""
    run = runs(tmp_path, cifar_data_dir).start()
    run.wait_for_epoch_1()
    first = (run.out / "checkpoints" / "alexnet-01.pt").stat()
    os.killpg(run.proc.pid, signal.SIGTERM)
    run.wait(timeout=STOP_WITHIN_S)

    assert_stopped_cleanly(run, 143, "interrupted")
    assert "interrupted: run the same command again to resume (stopped by SIGTERM" in run.stderr()
    assert wait_until_gone(run.server_pid(), timeout=STOP_WITHIN_S)  # stopped by the run before it exited
    assert not list((tmp_path / ".prefect").glob("temporary-server-*.log"))  # stopped as asked: log deleted
    flow_state, task_states = states_in_database(tmp_path / ".prefect", run.flow_run_id())
    assert flow_state == "Crashed" and "Running" not in task_states, (flow_state, task_states)

    # The same command again (stopped by a fault point once epoch 2 is written).
    again = runs(tmp_path, cifar_data_dir, env={"ALEXNET_PIPELINE_CRASH_AT": "after-checkpoint:2"}).start()
    again.wait(timeout=300)
    assert again.proc.returncode == -signal.SIGKILL, again.stderr()[-3000:]
    assert f"Resuming {run.out} after epoch 1 of 40" in again.stderr()
    assert (run.out / "checkpoints" / "alexnet-01.pt").stat().st_mtime_ns == first.st_mtime_ns
    assert (run.out / "checkpoints" / "alexnet-02.pt").is_file()
    # Killed with SIGKILL, the run could not stop its server: the kernel told it to go.
    assert wait_until_gone(again.server_pid()), "the temporary server outlived a run killed with SIGKILL"


@pytest.mark.slow
def test_sigint_to_the_run_alone_marks_the_flow_run_crashed(runs, cifar_data_dir, cli_prefect_home, tmp_path):
    """`kill -INT PID` (not the group), against a server that is not the
    run's own (the test harness's, as PREFECT_API_URL would name one)."""
    from prefect.client.orchestration import get_client

    run = runs(tmp_path, cifar_data_dir, env={"PREFECT_HOME": str(cli_prefect_home)}).start()
    run.wait_for_epoch_1()
    os.kill(run.proc.pid, signal.SIGINT)
    run.wait(timeout=STOP_WITHIN_S)

    assert_stopped_cleanly(run, 130, "interrupted")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.flow_run_id())
    assert flow_run.state.name == "Crashed" and "SIGINT" in flow_run.state.message


def test_a_second_signal_ends_the_stop_at_once(tmp_path):
    """The first stop is slow on purpose: recording the crash waits 3 s for a
    server that accepts the connection and never answers, stopping the
    "temporary server" (a process that ignores SIGTERM) 3 s more. A second
    signal during it ends the process at once, with the second signal's status."""
    import socket

    with socket.socket() as silent_server:
        silent_server.bind(("127.0.0.1", 0))
        silent_server.listen(16)  # never accepted: requests wait for their timeout
        port = silent_server.getsockname()[1]
        script = textwrap.dedent(f"""
            import subprocess, sys, time
            from flows import interrupt
            import prefect.client.orchestration, prefect.states  # imported now, not while stopping
            stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                         "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            interrupt.install()
            interrupt.set_server("http://127.0.0.1:{port}/api", stubborn)
            interrupt._State.flow_run_id = "0f2c2d0e-5d16-4c8b-9a8e-000000000000"
            print("ready", flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.stderr.readline() in ("\n", "")
            line = proc.stderr.readline()
            os.kill(proc.pid, signal.SIGINT)
            stderr = proc.communicate(timeout=STOP_WITHIN_S)[1]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert line.startswith("interrupted: run the same command again to resume (stopped by SIGTERM"), line + stderr
    # SIGINT's status: the second signal ended it (the first stop would end
    # with SIGTERM's 143, at the earliest 6 s later).
    assert proc.returncode == 130, stderr
    assert "interrupted" not in stderr  # nothing more printed


def test_a_signal_is_handled_while_the_main_thread_cannot_run_python(tmp_path):
    """Python runs signal handlers on the main thread only, between bytecodes:
    a long C call there (a CPU training step) would delay the stop. Here the
    main thread blocks the signal and sleeps for a minute; the stop still
    happens at once, from the wakeup pipe's reader thread. SIGHUP: 129."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from flows.interrupt import install
        # As in a terminal. Started under nohup (SIGHUP ignored, and inherited
        # so), the command keeps ignoring it by design, and this test would wait.
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        install()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # for this thread only
        print("ready", flush=True)
        time.sleep(60)
        print("not stopped", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGHUP)
        # Unhandled, the process would sleep on for a minute, then exit 0.
        stdout, stderr = proc.communicate(timeout=STOP_WITHIN_S - 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 129, stderr
    assert "interrupted: run the same command again to resume (stopped by SIGHUP" in stderr
    assert "not stopped" not in stdout


def test_a_stopping_process_leaves_no_temporary_file_and_renames_none(tmp_path):
    """abandon_unfinished_files(): a file still being written is deleted, and
    its writer never renames it into place, nor starts another."""
    script = textwrap.dedent(f"""
        import threading
        from pathlib import Path
        from alexnet_pipeline import files
        from alexnet_pipeline.files import abandon_unfinished_files, atomic_path, atomic_write_text
        folder = Path({str(tmp_path)!r})
        writing, go_on, finished = threading.Event(), threading.Event(), []
        parked = threading.Semaphore(0)

        def park_until_exit():  # files' own wait, which also says that a writer got there
            parked.release()
            threading.Event().wait()

        files._wait_for_exit = park_until_exit

        def write():
            with atomic_path(folder / "big.bin") as tmp:
                tmp.write_bytes(b"x" * 1000)
                writing.set()
                go_on.wait()
            finished.append("big.bin")

        def write_late():
            atomic_write_text(folder / "late.txt", "x")
            finished.append("late.txt")

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writing.wait()
        removed = abandon_unfinished_files()
        go_on.set()
        # Deadlines, not pauses: each wait ends as soon as its condition holds.
        writer.join(timeout=60)  # its file gone, the writer fails, or parks, instead of renaming
        settled = not writer.is_alive() or parked.acquire(timeout=60)
        threading.Thread(target=write_late, daemon=True).start()
        settled = settled and parked.acquire(timeout=60)  # the late writer parked before creating its file
        print(settled, [p.name.startswith(".big.bin.") for p in removed], sorted(p.name for p in folder.iterdir()),
              finished)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=180)
    assert done.stdout.strip() == "True [True] [] []", done.stderr


# --- a Prefect server that goes away -----------------------------------------------------


# Waits for the moment in argv[1], then does what a run does with its server.
_START_AT = """
import sys, time
from flows.prefect_server import prefect_server, probe
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.005)
with prefect_server() as url:
    assert probe(url) is None
"""


@pytest.mark.slow
def test_runs_started_together_on_a_new_prefect_home_all_get_a_server(tmp_path):
    """Four runs started in the same instant on a PREFECT_HOME with no
    database yet: each temporary server used to create the tables at once,
    and some exited with "index ... already exists" (2 of 4 here before the
    fix). The first start now makes the database alone; all four start."""
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home),
           # a deadline for four servers booting on two cores, not a measurement
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.pop("PREFECT_API_URL", None)
    start = f"{time.time() + 10:.3f}"  # after the four interpreters have imported Prefect
    runs = [subprocess.Popen([sys.executable, "-c", _START_AT, start], env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            for _ in range(4)]
    results = [run.communicate(timeout=400) for run in runs]
    failed = [err for run, (_, err) in zip(runs, results, strict=True) if run.returncode != 0]
    assert not failed, failed[0][-2000:]
    assert not list(home.glob("temporary-server-*.log"))  # every server stopped as asked


@pytest.mark.slow
def test_the_temporary_server_killed_ends_the_run_in_seconds(runs, cifar_data_dir, tmp_path):
    """The temporary server dies (OOM killer, `kill -9`): it cannot come back,
    so the run stops at the next check, 2 s later, exit 4."""
    run = runs(tmp_path, cifar_data_dir).start()
    run.wait_for_epoch_1()
    os.kill(run.server_pid(), signal.SIGKILL)
    run.wait(timeout=STOP_WITHIN_S)

    assert_stopped_cleanly(run, 4, "error")
    found = re.search(r"error: the temporary Prefect server this run started at \S+ has exited "
                      r"\(status -9; its log: (\S+\.log)\); the run folder is intact: "
                      r"run the same command again to resume", run.stderr())
    assert found and Path(found[1]).is_file()  # kept: a server that died is worth looking into


@pytest.mark.slow
def test_a_lost_prefect_server_ends_the_run_after_the_grace_period(runs, cifar_data_dir, tmp_path):
    """A server named by PREFECT_API_URL stops answering: the run waits
    ALEXNET_PIPELINE_SERVER_GRACE_S (20 s by default, 3 s here) for it to come
    back, then stops with one line naming it, exit 4."""
    from flows.prefect_server import start_temporary_server

    url, server, _ = start_temporary_server()
    runs.also_kill(server.pid)
    run = runs(tmp_path, cifar_data_dir, env={"PREFECT_API_URL": url, "ALEXNET_PIPELINE_SERVER_GRACE_S": "3"}).start()
    run.wait_for_epoch_1()
    server.kill()
    server.wait()
    seconds = run.wait(timeout=3 + STOP_WITHIN_S)

    assert_stopped_cleanly(run, 4, "error")
    assert seconds >= 3, f"stopped {seconds:.1f} s after the server went, within the grace period"
    assert (f"error: lost the Prefect server at {url} (connection refused, for 3 s); the run folder is intact: "
            "run the same command again to resume") in run.stderr()


def test_the_temporary_server_s_output_goes_to_a_log_deleted_when_the_run_stops_it(tmp_path, capfd):
    """What the server prints (a shutdown while its services flush printed
    two tracebacks after a successful run on a GPU machine) is not the
    run's output: it goes to a log in PREFECT_HOME, deleted once the server
    has stopped as asked. (The server logs at DEBUG here, so that it prints
    a lot.)"""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_LOGGING_LEVEL, temporary_settings

    from flows.prefect_server import prefect_server, probe

    home = tmp_path / "home"
    with temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_LOGGING_LEVEL: "DEBUG"},
                            restore_defaults={PREFECT_API_URL}):
        with prefect_server() as url:
            assert probe(url) is None
            (log,) = home.glob("temporary-server-*.log")
            assert "uvicorn.error - Started server process" in log.read_text()
        assert not log.exists()
    err = capfd.readouterr().err
    assert "uvicorn.error" not in err and "prefect.server." not in err


def test_a_temporary_server_that_cannot_start_is_one_error_with_its_own_messages(tmp_path, capfd):
    """A server that fails at start-up (here: its database cannot be
    opened) is one error quoting its last messages without traceback
    frames, its full log kept; it used to be retried for ever, because
    uvicorn's exit status 3 was taken to mean only 'port already in use'."""
    from prefect.settings import (PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

    from flows.prefect_server import PrefectServerError, start_temporary_server

    home = tmp_path / "home"
    with temporary_settings({PREFECT_HOME: home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 60,
                             PREFECT_SERVER_DATABASE_CONNECTION_URL: "sqlite+aiosqlite:////proc/none/prefect.db"}):
        with pytest.raises(PrefectServerError) as failed:
            start_temporary_server()
    message = str(failed.value)
    assert message.startswith("the temporary Prefect server exited with status 3 while starting; its last messages:")
    assert "unable to open database file" in message and "Application startup failed" in message
    assert "Traceback" not in message and "  File " not in message
    (log,) = home.glob("temporary-server-*.log")
    assert f"(all of them: {log})" in message and "Traceback" in log.read_text()
    assert "Application startup failed" not in capfd.readouterr().err  # not on the run's terminal


@pytest.mark.parametrize("command", ["full_run", "evaluate", "sweep"])
def test_an_unreachable_prefect_server_is_reported_before_the_run_starts(command, cifar_data_dir, tmp_path, run_main):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.prefect_server import _free_port

    argv = {"full_run": [*ARGS, "--epochs", "1", "--data-dir", str(cifar_data_dir), "--out", str(tmp_path / "run")],
            "evaluate": [], "sweep": ["--set", "preset=smoke", "--grid", "seed=0,1"]}[command]
    url = f"http://127.0.0.1:{_free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        code, err = run_main(argv, command, prefect=True)
    assert code == 4, err
    assert f"error: cannot reach the Prefect server at {url} (PREFECT_API_URL): connection refused" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# --- result storage that cannot be written ------------------------------------------------


def fill(folder: Path, leave_free: int) -> None:
    """Fill a tmpfs until `leave_free` bytes are left."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    (folder / "filler").write_bytes(b"\0" * (free - leave_free))


def test_full_result_storage_is_an_error_before_the_run(cifar_data_dir, tmp_path, tiny_filesystem, run_main):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    storage = tiny_filesystem(64 * 1024)
    fill(storage, 0)
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(storage / "results")}):
        code, err = run_main([*ARGS, "--epochs", "1", "--data-dir", str(cifar_data_dir), "--out", str(tmp_path / "run")])
    assert code == 1, err
    assert f"error: cannot write Prefect's result storage {storage / 'results'} (No space left on device)" in err
    assert "PREFECT_LOCAL_STORAGE_PATH" in err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_result_storage_filling_up_during_the_run_is_a_warning(cifar_data_dir, cli_prefect_home, tmp_path,
                                                               tiny_filesystem):
    """Room for the check before the run and one result, not for the rest:
    the run completes (its outputs do not depend on Prefect's cache), each
    unsaved result is one WARNING line, and the run ends with a warning."""
    storage = tiny_filesystem(64 * 1024)
    fill(storage, 4096)
    done = run_cli([*ARGS, "--epochs", "1", "--data-dir", str(cifar_data_dir), "--out", str(tmp_path / "run")],
                   cwd=tmp_path, env={"PREFECT_HOME": str(cli_prefect_home),
                                      "PREFECT_LOCAL_STORAGE_PATH": str(storage / "results")}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    found = re.search(r"warning: Prefect could not save (\d+) result\(s\) in (\S+) \(No space left on device\): "
                      r"this run's outputs are complete, but the same command will redo those stages", done.stderr)
    assert found, done.stderr[-3000:]
    assert found.group(2) == str(storage / "results")
    assert int(found.group(1)) == done.stderr.count("could not save this result in") >= 1
    assert (tmp_path / "run" / "report.md").is_file()
