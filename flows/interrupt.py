"""How a command-line run stops: on a signal, or when its Prefect server is gone.

A run folder survives a kill at any point (atomic files, a lock the kernel
releases, resume from the last complete epoch), so the quickest honest answer
to a stop request is to stop now, say so in one line and how to resume:

    SIGINT  (Ctrl-C)                                 interrupted: ...   exit 130
    SIGTERM (systemd, docker stop, an eviction)      interrupted: ...   exit 143
    SIGHUP  (the terminal closed; not under nohup)   interrupted: ...   exit 129
    a second signal while stopping                   nothing more       exit 128+N at once
    the Prefect server is gone (flows/prefect_server.py)   error: ...   exit 4

Stopping deletes this process's temporary files not yet renamed (nothing
half-written is left), marks the flow run and its running task runs Crashed
on the server (3 s at most; skipped when the server is gone), stops the
temporary server, and exits with os._exit: no finally block, no Prefect
retries against a server that may be gone. It takes 10 s at most, whatever
hangs; usually well under a second.

The signal handlers are installed by the command lines (main()), not by the
flows: a flow run that a worker started keeps Prefect's own SIGTERM handling,
which is how a worker cancels it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

EXIT_SERVER_LOST = 4
STOP_DEADLINE_S = 10.0
MARK_CRASHED_TIMEOUT_S = 3.0
RESUME_HINT = "run the same command again to resume"


class _State:
    hint = RESUME_HINT
    installed = False
    api_url: str | None = None
    server: subprocess.Popen | None = None  # the temporary server this process started
    server_log: Path | None = None  # where its output goes
    flow_run_id: str | None = None
    stopping = threading.Lock()
    wakeup: tuple[int, int] | None = None  # the pipe the kernel-level handler writes signal numbers to


def _handled_signals() -> list[signal.Signals]:
    wanted = [signal.SIGINT, signal.SIGTERM]
    # Under nohup SIGHUP is ignored on purpose; keep it so.
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    return wanted


def install(hint: str = RESUME_HINT) -> tuple[dict, int]:
    """Install the handlers (main thread only); returns the previous ones.

    Python runs a signal handler on the main thread, between two bytecodes:
    a long CPU training step would delay it by as long. So the signal number
    also goes down a pipe (signal.set_wakeup_fd, written by the C-level
    handler at once) that a thread of ours reads; whichever of the two reads
    a signal's byte first handles that signal, once."""
    _State.hint, _State.installed = hint, True
    if _State.wakeup is None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        _State.wakeup = (read_end, write_end)
        threading.Thread(target=_read_signals, name="signal-reader", daemon=True).start()
    previous = {signum: signal.signal(signum, _on_signal) for signum in _handled_signals()}
    return previous, signal.set_wakeup_fd(_State.wakeup[1], warn_on_full_buffer=False)


@contextlib.contextmanager
def exit_on_signals(hint: str = RESUME_HINT) -> Iterator[None]:
    """For a command line's main(): stop cleanly on SIGINT, SIGTERM, SIGHUP;
    the previous handlers are back afterwards (main() may run in-process)."""
    previous, previous_fd = install(hint)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _State.installed, _State.flow_run_id = False, None


def keep_signals_in_flow() -> None:
    """First line of a flow. Prefect's engine replaces the SIGTERM handler
    for the flow's duration: it reports the crash to the server first, which
    takes minutes of retries when the server is gone. Under a command line
    (exit_on_signals active) take it back; the engine restores ours when the
    flow ends. A flow run a worker started is left to Prefect."""
    if not _State.installed or threading.current_thread() is not threading.main_thread():
        return
    from prefect.runtime import flow_run

    _State.flow_run_id = flow_run.get_id()
    for signum in _handled_signals():
        signal.signal(signum, _on_signal)


def set_server(api_url: str | None, server: subprocess.Popen | None, server_log: Path | None = None) -> None:
    """The API the run uses, and the temporary server to stop (if it started one) with its log file."""
    _State.api_url, _State.server, _State.server_log, _State.flow_run_id = api_url, server, server_log, None


def discard_log_of_stopped_server(server: subprocess.Popen, log: Path | None) -> None:
    """A temporary server that stopped when asked to: its log holds only
    shutdown noise. One that crashed or had to be killed keeps its log."""
    if log is not None and server.returncode in (0, -signal.SIGTERM):
        with contextlib.suppress(OSError):
            log.unlink()


def forget_flow_run() -> None:
    """The flow has returned: a signal now must not mark it Crashed."""
    _State.flow_run_id, _State.api_url = None, None


def hint() -> str:
    return _State.hint


def set_hint(text: str) -> None:
    """What the interrupted: line says to do, once a command knows better
    than when it installed the handlers (a sweep: where its trials run)."""
    _State.hint = text


def _read_signals() -> None:
    read_end = _State.wakeup[0]
    while True:
        select.select([read_end], [], [])
        _take_signals()


def _take_signals() -> bool:
    """Handle the signals waiting in the pipe; False if there were none."""
    try:
        data = os.read(_State.wakeup[0], 512)
    except BlockingIOError:
        return False
    handled = {int(s) for s in _handled_signals()}
    for signum in data:
        if _State.installed and signum in handled:
            _signal_arrived(signum)
    return True


def _on_signal(signum: int, frame) -> None:
    if _take_signals():
        return
    # Nothing in the pipe: the reader thread took it, or another wakeup fd
    # replaced ours (then this handler is all there is).
    current = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current)
    if current != _State.wakeup[1]:
        _signal_arrived(signum)


def _signal_arrived(signum: int) -> None:
    code, name = 128 + signum, signal.Signals(signum).name
    if not _State.stopping.acquire(blocking=False):
        os._exit(code)  # a second signal while stopping: now
    args = (code, f"interrupted: {_State.hint} (stopped by {name}; the run folder is intact)", f"Interrupted by {name}")
    try:
        # Not a daemon: should the run end normally meanwhile, the interpreter waits for it.
        threading.Thread(target=_stop, name="stopping", args=args).start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        _stop(*args)


def stop_now(code: int, line: str, mark_crashed: str | None = None) -> None:
    """Print `line`, clean up within STOP_DEADLINE_S, exit with `code`.
    Returns at once if a stop is already under way."""
    if _State.stopping.acquire(blocking=False):
        _stop(code, line, mark_crashed)


def _stop(code: int, line: str, mark_crashed: str | None) -> None:
    deadline = threading.Timer(STOP_DEADLINE_S, os._exit, (code,))
    deadline.daemon = True
    with contextlib.suppress(RuntimeError):  # at interpreter shutdown: no deadline, the steps are bounded
        deadline.start()
    _say_last(line)
    from alexnet_pipeline.files import abandon_unfinished_files

    abandon_unfinished_files()
    if mark_crashed:
        _mark_crashed(mark_crashed)
    _stop_server()
    os._exit(code)


def _say_last(line: str) -> None:
    """Write `line` as the process's last words: what the other threads print
    while it stops (the progress bar goes on until the exit) goes to /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        stderr = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    except OSError:
        stderr = 2
    os.write(stderr, f"\n{line}\n".encode())


def _mark_crashed(message: str) -> None:
    """Tell the server, so that its UI does not show the run as Running
    forever. One try per request, 3 s each: the server may be the problem."""
    flow_run_id = _State.flow_run_id  # set by keep_signals_in_flow()
    if _State.api_url is None or flow_run_id is None:  # no flow running
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
        from prefect.states import Crashed

        with (temporary_settings({PREFECT_API_URL: _State.api_url, PREFECT_CLIENT_MAX_RETRIES: 0}),
              get_client(sync_client=True, httpx_settings={"timeout": MARK_CRASHED_TIMEOUT_S}) as client):
            running = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
                    any_=[StateType.RUNNING, StateType.PENDING]))),
            )
            for task_run in running:
                client.set_task_run_state(task_run.id, Crashed(message=message))
            client.set_flow_run_state(flow_run_id, Crashed(message=message))
    except Exception:  # noqa: BLE001 - exiting matters more than the record
        pass


def _stop_server() -> None:
    servers = [_State.server]
    prefect_servers = sys.modules.get("prefect.server.api.server")  # never imported here: seconds
    try:  # a server Prefect started itself, should one exist
        servers += [getattr(s, "server_process", None) for s in prefect_servers.SubprocessASGIServer._instances.values()]
    except Exception:  # noqa: BLE001 - not imported, or Prefect internals moved
        pass
    for process in servers:
        if process is not None and process.poll() is None:
            stop_process(process)
    if _State.server is not None:
        discard_log_of_stopped_server(_State.server, _State.server_log)


def stop_process(process: subprocess.Popen, wait_s: float = 3.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
