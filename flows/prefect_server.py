"""The Prefect server a command-line run talks to, and what happens when it goes away.

    with prefect_server():          # in main(), around the flow call
        result = full_run(...)

- PREFECT_API_URL set: that server must answer before the run starts (else
  `error: cannot reach the Prefect server ...`, exit 4, within 5 s).
- Not set: a temporary local server, as Prefect would start, but in its own
  session, so that a signal sent to the run's process group (Ctrl-C in a
  terminal, systemd's or a container runtime's SIGTERM) reaches the run and
  not the server the run still needs to record how it stopped. The run stops
  it at the end; were the run killed outright (kill -9), the server gets a
  SIGTERM from the kernel (Linux: PR_SET_PDEATHSIG) instead of being left
  behind.
- During the run a watcher asks the server's /health every 2 s. A temporary
  server that exited ends the run at the next check (2 s). A server that
  does not answer for GRACE_S (20 s; ALEXNET_PIPELINE_SERVER_GRACE_S) ends
  it with `error: lost the Prefect server at URL ...`, exit 4, about 22 s
  after it went away (27 s at most when it hangs rather than refuses).
  Why 20 s: a restarting server (12-14 s for `prefect server start` on 2
  CPUs) is waited for, and Prefect's client retries each request for about
  a minute, so a shorter outage costs nothing; after that every state
  change of the run would fail, and its five retries per request are what
  made a lost server cost minutes and tracebacks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from alexnet_pipeline.errors import ConfigError, PipelineError
from flows import interrupt

GRACE_ENV = "ALEXNET_PIPELINE_SERVER_GRACE_S"
GRACE_S = 20.0
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 5.0


class PrefectServerError(PipelineError):
    # Not the input (1), the config (2) or a lock (3): the same command can
    # succeed once the server is back.
    exit_code = interrupt.EXIT_SERVER_LOST


# Run by the server's own interpreter: ask the kernel for a SIGTERM when the
# run's process ends, however it ends, then run uvicorn as `python -m uvicorn`.
_SERVER_LAUNCHER = """
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != parent:
    sys.exit(0)
sys.argv[0] = "uvicorn"
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def grace_seconds() -> float:
    text = os.environ.get(GRACE_ENV)
    if text is None:
        return GRACE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{GRACE_ENV}: expected a number of seconds greater than 0, got {text!r}")
    return value


@contextlib.contextmanager
def prefect_server(while_starting: Callable[[], object] | None = None,
                   early: EarlyServer | None = None) -> Iterator[str]:
    """Yield the API URL the flow will use; watch it while the flow runs.
    `while_starting` (the flow's imports) runs while a temporary server
    boots, in its own process: the two overlap instead of adding up.
    `early`: the server start_early() started, used unless Prefect's
    settings name a server after all."""
    from prefect.settings import PREFECT_API_URL

    try:
        grace = grace_seconds()
    except ConfigError:
        if early is not None:
            early.abandon()
        raise
    configured = PREFECT_API_URL.value()
    if configured and early is not None:
        early.abandon()
        early = None
    if configured:
        url, process, log = configured.rstrip("/"), None, None
        problem = probe(url)
        if problem:
            raise PrefectServerError(
                f"cannot reach the Prefect server at {url} (PREFECT_API_URL): {problem}. "
                "Start it, or unset PREFECT_API_URL to use a temporary local server")
        if while_starting is not None:
            while_starting()
    else:
        url, process, log = start_temporary_server(while_starting=while_starting, early=early)
    previous_env = os.environ.get("PREFECT_API_URL")
    if process is not None:
        _use_api_url(url)
    interrupt.set_server(url, process, log)
    watch = ServerWatch(url, process, grace, log)
    watch.start()
    try:
        yield url
    except Exception as exc:
        if _is_connection_error(exc):  # the flow failed on its server before the watcher's verdict
            watch.check(grace=0)
        raise
    finally:
        watch.stop()
        interrupt.forget_flow_run()
        if process is not None:
            _drain_prefect_workers()
            interrupt.stop_process(process)
            interrupt.discard_log_of_stopped_server(process, log)
            _use_api_url(previous_env)
        interrupt.set_server(None, None)


class ServerWatch(threading.Thread):
    def __init__(self, url: str, process: subprocess.Popen | None, grace: float, log: Path | None = None):
        super().__init__(name="prefect-server-watch", daemon=True)
        self.url, self.process, self.grace, self.log = url, process, grace, log
        self._stopped = threading.Event()
        self._failing_since: float | None = None

    def run(self) -> None:
        while not self._stopped.wait(PROBE_EVERY_S):
            self.check(self.grace)

    def check(self, grace: float) -> None:
        """End the run if the server is gone: a temporary server that exited
        at once, any server after `grace` seconds without an answer."""
        # poll() before lost() looks at _stopped: the run stops its server only after stop().
        if self.process is not None and self.process.poll() is not None:
            self.lost(f"the temporary Prefect server this run started at {self.url} has exited "
                      f"(status {self.process.returncode}; its log: {self.log})")
        problem = probe(self.url)
        if problem is None:
            self._failing_since = None
            return
        self._failing_since = self._failing_since or time.monotonic()
        if time.monotonic() - self._failing_since >= grace:
            self.lost(f"lost the Prefect server at {self.url} ({problem}" + (f", for {grace:.0f} s)" if grace else ")"))

    def lost(self, what: str) -> None:
        if self._stopped.is_set():  # the run has ended meanwhile
            return
        interrupt.stop_now(interrupt.EXIT_SERVER_LOST, f"error: {what}; the run folder is intact: {interrupt.hint()}")

    def stop(self) -> None:
        self._stopped.set()


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server answers, else why not. Any HTTP answer counts (a
    401 from a server with authentication, say) except a proxy's 502-504."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout, verify=_tls_verify())
    except httpx.TimeoutException:
        return f"no answer within {timeout:.0f} s"
    except httpx.HTTPError as exc:
        return _reason(exc)
    if response.status_code in (502, 503, 504):
        return f"HTTP {response.status_code} {response.reason_phrase}"
    return None


def _tls_verify():
    """What Prefect's own client verifies the server with."""
    import ssl

    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        return False
    return ssl.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


def _reason(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _is_connection_error(exc: BaseException | None) -> bool:
    import httpx

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (httpx.TransportError, ConnectionError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class TemporaryServer(NamedTuple):
    url: str  # the API URL, .../api
    process: subprocess.Popen
    log: Path  # the server's own output (deleted when the run stops it)


def start_temporary_server(timeout: float | None = None, while_starting: Callable[[], object] | None = None,
                           early: EarlyServer | None = None) -> TemporaryServer:
    """Start Prefect's temporary server (the command Prefect 3's
    SubprocessASGIServer runs) in its own session; `while_starting` runs
    once the server's process is started, before waiting for it to answer.

    Its output goes to a log file in PREFECT_HOME, not to the run's
    terminal: a server stopped while its services flush (seen on a GPU
    machine: task_run_recorder "Error flushing 1 events" with two
    tracebacks after a successful run) would otherwise end the run's output
    with stack traces that are not about the run. The log's last lines are
    in the error when the server fails to start; it is kept when the server
    exits during a run, and deleted when the run stops it."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    timeout = timeout or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    if early is not None:  # started already, holding the database's lock if it needed it
        with early.lock:
            return _start(early.home, early.env, timeout, while_starting, early.spawned)
    settings = get_current_settings()
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True)}
    home = Path(settings.home).expanduser()
    with _first_start_alone(home, settings.server.database.connection_url.get_secret_value(), timeout):
        return _start(home, env, timeout, while_starting)


class EarlyServer(NamedTuple):
    """A temporary server started before Prefect was imported, not yet answering."""
    home: Path
    env: dict[str, str]
    spawned: tuple[subprocess.Popen, str, Path]  # the process, its API URL, its log
    lock: contextlib.ExitStack  # the database's start lock (_first_start_alone), held until it answers

    def abandon(self) -> None:
        """Prefect's settings name a server after all: stop this one."""
        process, _, log = self.spawned
        interrupt.stop_process(process)
        interrupt.set_server(None, None)
        with contextlib.suppress(OSError):
            log.unlink()
        # Released as after a failed start: the database is not marked made.
        self.lock.__exit__(PrefectServerError, PrefectServerError("not used"), None)


# What decides which server a run uses and where its database is: where
# any of these is set, start_early() leaves the start to Prefect's settings.
_DECISIVE_SETTINGS = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_DATABASE", "PREFECT_API_DATABASE",
                      "PREFECT_PROFILES_PATH")


def start_early() -> EarlyServer | None:
    """Start the temporary server before Prefect is imported (2-3 s of a
    command's start-up on 2 CPUs), so that its boot overlaps that import;
    None where a temporary server may not be what Prefect's settings say.

    Prefect's settings come from the environment, the active profile and
    files in the current folder (.env, prefect.toml, pyproject.toml). Read
    without Prefect here: the environment and the profile, and only when
    neither names a server, a home other than PREFECT_HOME or a database,
    and no such file is in the current folder. The server itself reads the
    same sources, as a server Prefect starts would. prefect_server() checks
    with Prefect's own settings and stops this one should they name a server."""
    import importlib.metadata
    import importlib.util
    import tomllib

    if any(name.startswith(_DECISIVE_SETTINGS) and value for name, value in os.environ.items()
           if name != "PREFECT_HOME"):
        return None
    for name, says_prefect in ((".env", "PREFECT_"), ("prefect.toml", ""), ("pyproject.toml", "[tool.prefect")):
        try:
            if says_prefect in Path(name).read_text(errors="replace"):
                return None
        except FileNotFoundError:
            pass
        except OSError:
            return None
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except FileNotFoundError:
        profiles = {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = profiles.get("profiles", {}).get(active, {})
    if not isinstance(profile, dict) or any(str(name).startswith(_DECISIVE_SETTINGS) for name in profile):
        return None
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    if spec is None or not spec.origin:
        return None
    # Prefect's default database (prefect.settings: server.database.connection_url).
    database_url = f"sqlite+aiosqlite:///{home}/prefect.db"
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 90)
    lock = contextlib.ExitStack()
    lock.enter_context(_first_start_alone(home, database_url, timeout, importlib.metadata.version("prefect")))
    try:
        env = dict(os.environ)
        spawned = _spawn(home, env, Path(spec.origin).parent.parent)
    except BaseException:
        lock.close()
        raise
    interrupt.set_server(None, spawned[0], spawned[2])  # a signal meanwhile stops it too
    return EarlyServer(home, env, spawned, lock)


def _spawn(home: Path, env: dict[str, str], app_dir: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start the server's process on a free port; (process, API URL, log)."""
    env = {**env, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    port = _free_port()
    log = _server_log(home, port)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_LAUNCHER, str(os.getpid()), "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, start_new_session=True, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/api", log


def _start(home: Path, env: dict[str, str], timeout: float, while_starting: Callable[[], object] | None = None,
           spawned: tuple[subprocess.Popen, str, Path] | None = None) -> TemporaryServer:
    import prefect
    from prefect.logging import get_logger

    deadline = time.monotonic() + timeout
    while True:
        process, url, log = spawned or _spawn(home, env, Path(prefect.__file__).parent.parent)
        spawned = None
        if while_starting is not None:
            # A signal meanwhile stops this server too (no run to mark yet).
            interrupt.set_server(None, process, log)
            began = time.monotonic()
            try:
                while_starting()
                deadline += time.monotonic() - began  # the server's timeout is its own, not the imports'
            except BaseException:
                interrupt.stop_process(process)
                raise
            finally:
                interrupt.set_server(None, None)
            while_starting = None  # once: a restart on another port does not import again
        while process.poll() is None and probe(url, timeout=2) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() == 3 and _port_was_taken(log) and time.monotonic() < deadline:
            log.unlink(missing_ok=True)  # uvicorn's start-up failure (3) because the port was taken meanwhile
            continue
        if process.poll() is not None:
            raise PrefectServerError(f"the temporary Prefect server exited with status {process.returncode} while "
                                     f"starting; its last messages:\n{_tail(log)}\n(all of them: {log})")
        if probe(url, timeout=2) is not None:
            interrupt.stop_process(process)
            raise PrefectServerError(
                f"the temporary Prefect server did not start within {timeout:.0f} s (its log: {log}): raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start one (prefect server start) "
                "and set PREFECT_API_URL")
        get_logger().info(f"Started a temporary Prefect server on {url.removesuffix('/api')} for this run "
                          f"(pid {process.pid}); it stops when the run ends")
        return TemporaryServer(url, process, log)


@contextlib.contextmanager
def _first_start_alone(home: Path, url: str, timeout: float, version: str | None = None) -> Iterator[None]:
    """Let a server that may create the database start alone.

    Each temporary server creates the database's tables when it starts, if
    they are not there yet. Runs started together on a new PREFECT_HOME (as
    the lock message advises: several runs, each its own --out) started
    servers that raced to create the same tables, and one failed with
    "index ... already exists" (4 of 24 such runs). So a start holds an
    flock on PREFECT_HOME until its server answers, unless a mark says a
    server of this Prefect version has already made this database; the
    starts after that go at once, in parallel. The kernel drops the lock if
    the run dies, so a crashed start never blocks the next one. `version`:
    Prefect's, when Prefect is not imported yet."""
    if version is None:
        import prefect

        version = prefect.__version__
    database = _sqlite_file(url)
    # The URL may hold a password: the mark holds its hash only.
    wanted = hashlib.sha256(f"{version}\n{url}".encode()).hexdigest()
    mark = home / ".alexnet-database-made"

    def made() -> bool:
        try:
            return mark.read_text() == wanted and (database is None or database.is_file())
        except OSError:
            return False

    if made():
        yield
        return
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / ".alexnet-server-start.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a home this user may not write: nothing to share it with
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PrefectServerError(
                        f"another run's temporary Prefect server has been creating its database in {home} "
                        f"for more than {timeout:.0f} s; run again once it has started") from None
                time.sleep(0.1)
        if made():  # made while this start waited
            fcntl.flock(fd, fcntl.LOCK_UN)
        yield
        with contextlib.suppress(OSError):
            mark.write_text(wanted)
    finally:
        os.close(fd)


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (sqlite+aiosqlite:////abs/prefect.db),
    None for another database or one in memory."""
    if not url.startswith("sqlite"):
        return None
    path = url.partition(":///")[2].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _server_log(folder: Path, port: int) -> Path:
    """A new file for one server's output: PREFECT_HOME, else the temp folder."""
    for where in (folder, Path(tempfile.gettempdir())):
        try:
            where.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f"temporary-server-{port}-", suffix=".log", dir=where)
        except OSError:
            continue
        os.close(handle)
        return Path(name)
    return Path(os.devnull)


def _port_was_taken(log: Path) -> bool:
    try:
        return "address already in use" in log.read_text(errors="replace").lower()
    except OSError:
        return False


def _tail(log: Path, lines: int = 6) -> str:
    """The last messages of a server's log without its tracebacks' frames
    (the exception and the log lines around it say what went wrong)."""
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"  (cannot read {log}: {exc.strerror or exc})"
    frames = ("Traceback (most recent call last)", "During handling", "The above exception")
    messages = [line for line in text.splitlines()
                if line.strip() and not line[0].isspace() and not any(frame in line for frame in frames)]
    return "\n".join("  " + line for line in messages[-lines:]) or "  (none)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_api_url(url: str | None) -> None:
    """Point every thread's Prefect settings at `url` (None: unset)."""
    import prefect.context

    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    refresh = getattr(prefect.context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    else:  # Prefect before 3.9 has no function for it
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()


def _drain_prefect_workers(timeout: float = 5.0) -> None:
    """Let Prefect send its last logs and events while the server still runs
    (it would otherwise try at exit, against a stopped server)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)


# --- Prefect's result storage --------------------------------------------------------


def check_result_storage() -> None:
    """Before the run: the folder Prefect keeps cached results in must take
    a file, or nothing would be cached and a re-run would redo every stage."""
    from prefect.settings import PREFECT_DEFAULT_RESULT_STORAGE_BLOCK, PREFECT_LOCAL_STORAGE_PATH

    if PREFECT_DEFAULT_RESULT_STORAGE_BLOCK.value():
        return  # remote storage (S3, GCS, ...): Prefect reports its own errors
    folder = Path(PREFECT_LOCAL_STORAGE_PATH.value()).expanduser()
    probe_file = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe_file, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise PipelineError(
            f"cannot write Prefect's result storage {folder} ({exc.strerror or exc}): no stage could be cached, "
            "so a re-run would redo everything. Free disk space there, or set PREFECT_LOCAL_STORAGE_PATH "
            "to a folder on another disk") from None
    finally:
        with contextlib.suppress(OSError):
            probe_file.unlink()


def warn_unsaved_results() -> None:
    """After the run: one line if Prefect could not save some results."""
    from tasks import unsaved_results

    if unsaved_results:
        folders = sorted({folder for folder, _ in unsaved_results})
        reasons = sorted({reason for _, reason in unsaved_results})
        print(f"\nwarning: Prefect could not save {len(unsaved_results)} result(s) in {', '.join(folders)} "
              f"({'; '.join(reasons)}): this run's outputs are complete, but the same command will redo "
              "those stages instead of reusing them. Free disk space there, or set PREFECT_LOCAL_STORAGE_PATH "
              "to a folder on another disk.", file=sys.stderr)
        unsaved_results.clear()
