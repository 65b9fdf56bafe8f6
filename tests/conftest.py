"""Shared fixtures. Prefect runs under its test harness (one temporary server
per test session), with result storage in a fresh folder per test so cache
entries never leak between tests (the harness isolates only the database)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from tests.fixtures import make_cifar_archive, make_fake_weights, make_image_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# The pipeline's own cache folder (image folders' preprocessed data) is the
# test session's, never the user's ~/.cache: set before any fixture, module-
# scoped ones included, preprocesses; child processes inherit it.
_SESSION_CACHE = tempfile.mkdtemp(prefix="alexnet-pipeline-test-cache-")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, True)


@pytest.fixture
def user_cache_dir(tmp_path, monkeypatch) -> Path:
    """A test's own pipeline cache folder, for tests that look inside it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "alexnet-pipeline"


@pytest.fixture(autouse=True)
def few_checkpoints_in_memory():
    """Every test trains models of 228 MB: the test process keeps at most
    two of its checkpoints in memory, and none from an earlier test."""
    from alexnet_pipeline.checkpoint import recent

    recent.clear()
    budget, recent._budget = recent._budget, 500 << 20
    yield
    recent.clear()
    recent._budget = budget


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def prefect_storage(prefect_harness, tmp_path):
    """Use in flow tests: the harness plus a per-test result store."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "prefect-storage")}):
        yield tmp_path / "prefect-storage"


@pytest.fixture(scope="session")
def cifar_archive_dir(tmp_path_factory) -> Path:
    """A folder holding a small cifar-10-python.tar.gz (read-only use: copy it)."""
    folder = tmp_path_factory.mktemp("cifar-archive")
    make_cifar_archive(folder)
    return folder


@pytest.fixture
def cifar_data_dir(cifar_archive_dir, tmp_path) -> Path:
    """A fresh data folder with the small archive in it, per test."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cifar-10-python.tar.gz").write_bytes((cifar_archive_dir / "cifar-10-python.tar.gz").read_bytes())
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """`module_tmp(name)`: a new folder for a module fixture's files (a
    trained run is about 0.9 GB), removed once the module's tests are done:
    tmp_path_factory's folders would stay until pytest ends. A test's own
    tmp_path goes when it passes (tmp_path_retention_policy, pyproject.toml)."""
    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_weights(tmp_path_factory) -> Path:
    return make_fake_weights(tmp_path_factory.mktemp("weights") / "alexnet-fake.pth")


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python flows/full_run.py ARGS` as a user would, in its own process
    group; the whole group is killed afterwards, because a SIGKILLed run leaves
    Prefect's temporary server behind."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.setdefault("PREFECT_HOME", str(cwd / ".prefect"))
    for harness_var in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        full_env.pop(harness_var, None)
    # Output goes to files, not pipes: a run that SIGKILLs itself leaves its
    # temporary server alive holding inherited pipes open, and reading them
    # would wait for that orphan instead of for the run.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "full_run.py"), *args], cwd=cwd, env=full_env,
                                stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def run_python_with_permissions_enforced(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` in a process to which file permissions apply.
    Tests run as root here, and root reads a chmod 000 file regardless: the
    process drops the two capabilities that let it (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH) from its bounding set, so permission errors are the
    kernel's own, not simulated. It stays uid 0: the files pytest made (in
    a folder only root may enter) remain reachable."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv"):
            command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
        elif shutil.which("capsh"):
            import shlex

            command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(command)]
        else:
            pytest.skip("running as root, and neither setpriv nor capsh is installed to drop the capabilities "
                        "that let root read unreadable files")
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cli_prefect_home(prefect_harness, tmp_path) -> Path:
    """PREFECT_HOME for run_cli (pass env={"PREFECT_HOME": str(it)}) whose
    profile points at the harness's server, with its own result storage.
    The command then starts no temporary server (~10 s saved per run); and a
    run that SIGKILLs itself leaves no orphaned server holding run_cli's
    stdout/stderr pipes open (run_cli would wait for them until its timeout)."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "cli-prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "default"\n\n[profiles.default]\nPREFECT_API_URL = "{PREFECT_API_URL.value()}"\n')
    return home


# --- a command line's main() in this process -------------------------------------------


@contextlib.contextmanager
def _prefect_must_not_start(*args, **kwargs):
    raise AssertionError("the command reached Prefect: this refusal must come before Prefect starts")
    yield  # pragma: no cover


def _prefect_console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    return [h for logger in loggers for h in getattr(logger, "handlers", []) if isinstance(h, PrefectConsoleHandler)]


@pytest.fixture
def run_main(monkeypatch, tmp_path, capsys):
    """`run_main(argv, command="full_run", prefect=False)`: call
    flows/COMMAND.py's main(argv) in this process, from tmp_path as the
    current folder, as `python flows/COMMAND.py ARGV` would run; returns
    (exit status, stderr). Saves the 5-10 s a new Python, torch and Prefect
    cost per case, for refusals whose process-level behaviour (sys.exit,
    no traceback) the command-line smoke tests cover (tests/README.md).

    prefect=False: the refusal must come before Prefect starts (reaching
    prefect_server() fails the test). prefect=True: the command runs its flow
    on the test harness's server (request `prefect_storage`), and Prefect's
    console log is captured with the rest of stderr.

    What main() changes for the process is put back afterwards: the
    command-line error mode of tasks, the start-up time the first flow run
    reports, Prefect's console log stream, and the signal handlers (asserted)."""
    importlib.import_module("prefect")  # now: importing it creates PREFECT_HOME, and a test may point HOME elsewhere
    import tasks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tasks, "_command_line_prints_errors", tasks._command_line_prints_errors)
    # A harness server slow to answer under load must not end pytest itself
    # (the server watch exits the process after the grace period).
    monkeypatch.setenv("ALEXNET_PIPELINE_SERVER_GRACE_S", "3600")
    handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    handlers = {signum: signal.getsignal(signum) for signum in handled}

    def run(argv: list[str], command: str = "full_run", prefect: bool = False) -> tuple[int, str]:
        module = importlib.import_module(f"flows.{command}")
        if hasattr(module, "_PROCESS_STARTED"):  # the start-up time the process's first flow run reports
            monkeypatch.setattr(module, "_PROCESS_STARTED", module._PROCESS_STARTED)
        if prefect:
            from prefect.settings import PREFECT_API_URL

            assert PREFECT_API_URL.value(), "prefect=True runs on the harness's server: request prefect_storage"
            for handler in _prefect_console_handlers():
                monkeypatch.setattr(handler, "stream", sys.stderr)
                monkeypatch.setattr(handler.console, "file", sys.stderr)
        else:
            import flows.command_line  # runs every command's flow under prefect_server()

            monkeypatch.setattr(flows.command_line, "prefect_server", _prefect_must_not_start)
        capsys.readouterr()
        code = module.main(argv)
        err = capsys.readouterr().err
        assert {signum: signal.getsignal(signum) for signum in handled} == handlers, "main() left its signal handlers"
        return code, err

    yield run


# --- a small real filesystem --------------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path):
    """`tiny_filesystem(size)`: mount a tmpfs of `size` bytes under tmp_path
    and return it; skip where mounting is not allowed (needs root or
    CAP_SYS_ADMIN)."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / f"tinyfs-{uuid.uuid4().hex[:8]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}): "
                        "mounting needs root or CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


# The longest files first (seconds on 2 CPUs in brackets): the two workers of
# `-n 2 --dist loadfile` each take a whole file at a time, and a long file
# handed out last would leave the other worker idle at the end.
LONGEST_FILES = ("test_production.py",  # [~190]
                 "test_crash_points.py",  # [~180]
                 "test_stopping.py",  # [~110]
                 "test_benchmark.py",  # [~100]
                 "test_deployments.py")  # [~85]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
