"""A production-style Prefect set-up on one machine: a PostgreSQL data folder,
a Prefect server on it, the deployments and the zombie-run automation, and
one worker per GPU plus one for sweep controllers. Starts, stops and reports
each part; refuses, saying what to do, when a part it needs is missing.

    python deployments/single_host.py start                # postgres, server, workers (one per GPU, else 1)
    python deployments/single_host.py start --workers 3    # three run workers
    python deployments/single_host.py status               # each part; exit status 1 if one is down
    python deployments/single_host.py stop                 # workers (and their runs), server, postgres
    python deployments/single_host.py start workers        # one part: postgres, server or workers
    python deployments/single_host.py deploy               # after editing prefect.yaml or automations.yaml
    python deployments/single_host.py start --database-url postgresql+asyncpg://USER:PASS@HOST:5432/prefect
                                                           # an existing PostgreSQL: no local data folder

Everything lives in one folder (--dir, default ~/.alexnet-prefect, or
/var/lib/alexnet-prefect for root): postgres/ (data folder and its log),
logs/ (server and workers), pids/, settings.json (what `start` was given, so
later commands need no flags). Stop and start again at will: the database
keeps every deployment, run and automation.

Needs PostgreSQL's server programs (Debian: apt-get install postgresql; they
are found on PATH, in /usr/lib/postgresql/*/bin, or in $PG_BIN). As root,
PostgreSQL runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
AUTOMATIONS_FILE = REPO / "deployments" / "automations.yaml"
PARTS = ("postgres", "server", "workers")
DEFAULTS = {"port": 4200, "pg_port": 5433, "database": "prefect", "database_url": None,
            "workers": None, "pool": "alexnet-pool", "heartbeat_window": 90, "ui": True}


class Refused(Exception):
    """A part cannot be started or used; the message says what to do."""


def say(text: str) -> None:
    print(text, flush=True)


# ---- the folder and its settings -------------------------------------------

class Setup:
    def __init__(self, folder: Path, overrides: dict):
        self.dir = folder
        saved = json.loads((folder / "settings.json").read_text()) if (folder / "settings.json").is_file() else {}
        self.settings = {**DEFAULTS, **saved, **{k: v for k, v in overrides.items() if v is not None}}
        if self.settings["workers"] is None:
            self.settings["workers"] = max(1, len(gpu_indices()))

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "settings.json").write_text(json.dumps(self.settings, indent=2) + "\n")

    def __getattr__(self, name):
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def local_postgres(self) -> bool:
        return not self.database_url

    @property
    def pg_dir(self) -> Path:
        return self.dir / "postgres"

    @property
    def connection_url(self) -> str:
        return self.database_url or f"postgresql+asyncpg://postgres@127.0.0.1:{self.pg_port}/{self.database}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def log(self, name: str) -> Path:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        return self.dir / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        (self.dir / "pids").mkdir(parents=True, exist_ok=True)
        return self.dir / "pids" / f"{name}.pid"

    def worker_names(self) -> list[str]:
        host = socket.gethostname()
        return [f"{host}-gpu{i}" for i in range(self.workers)] + [f"{host}-control"]


def default_dir() -> Path:
    if os.environ.get("ALEXNET_PREFECT_DIR"):
        return Path(os.environ["ALEXNET_PREFECT_DIR"])
    # root's home is private to root; the postgres user must reach its data folder.
    return Path("/var/lib/alexnet-prefect") if os.geteuid() == 0 else Path.home() / ".alexnet-prefect"


def gpu_indices() -> list[int]:
    if not shutil.which("nvidia-smi"):
        return []
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return list(range(sum(line.startswith("GPU ") for line in done.stdout.splitlines()))) if done.returncode == 0 else []


# ---- processes ---------------------------------------------------------------

def read_pid(setup: Setup, name: str, marker: str) -> int | None:
    """The pid recorded for `name` if that process still runs and is what we
    started (its command line holds `marker`): pids are reused."""
    try:
        pid = int(setup.pid_file(name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def launch(setup: Setup, name: str, args: list[str], env: dict[str, str]) -> int:
    """Start a detached process in its own session, output appended to its log."""
    with open(setup.log(name), "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    setup.pid_file(name).write_text(str(proc.pid))
    return proc.pid


def terminate(pids: list[int], signals: tuple[signal.Signals, ...], grace: float) -> None:
    """Send each signal in turn to every pid still alive, waiting up to
    `grace` seconds after each for all of them to end."""
    for sig in signals:
        living = [p for p in pids if alive(p)]
        if not living:
            return
        for pid in living:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in living):
            time.sleep(0.2)


# ---- PostgreSQL ----------------------------------------------------------------

def pg_bin() -> Path:
    candidates = [os.environ.get("PG_BIN", "")]
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(done.stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for folder in filter(None, candidates):
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return Path(folder)
    raise Refused("PostgreSQL's server programs (initdb, pg_ctl, psql) were not found. Install them "
                  "(Debian/Ubuntu: sudo apt-get install -y postgresql), or set PG_BIN to their folder, "
                  "or use an existing PostgreSQL server: start --database-url postgresql+asyncpg://USER:PASS@HOST:PORT/DB")


def as_postgres_user(args: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as `postgres`."""
    if os.geteuid() != 0:
        return args
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise Refused("running as root, and there is no `postgres` user to run PostgreSQL as (initdb refuses root): "
                      "create one (useradd --system postgres) or run this script as a normal user") from None
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]


def pg_ctl(setup: Setup, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = as_postgres_user([str(pg_bin() / "pg_ctl"), "-D", str(setup.pg_dir / "data"), *args])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise Refused(f"pg_ctl {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}\n"
                      f"see {setup.pg_dir / 'postgres.log'}")
    return done


def postgres_running(setup: Setup) -> bool:
    return (setup.pg_dir / "data" / "PG_VERSION").is_file() and pg_ctl(setup, "status", check=False).returncode == 0


def psql(setup: Setup, sql: str) -> str:
    done = subprocess.run([str(pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(setup.pg_port), "-U", "postgres",
                           "-d", "postgres", "-tAc", sql], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Refused(f"psql: {done.stderr.strip()}")
    return done.stdout.strip()


def start_postgres(setup: Setup) -> None:
    if not setup.local_postgres:
        say(f"postgres: not managed here; the server uses {redact(setup.database_url)}")
        return
    binaries = pg_bin()
    data = setup.pg_dir / "data"
    if not (data / "PG_VERSION").is_file():
        setup.pg_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(setup.pg_dir, "postgres", "postgres")
            reach = subprocess.run(as_postgres_user(["test", "-w", str(setup.pg_dir)]), check=False)
            if reach.returncode != 0:
                raise Refused(f"the postgres user cannot write {setup.pg_dir} (a folder above it is private to root): "
                              "choose a --dir that other users can reach, e.g. /var/lib/alexnet-prefect")
        say(f"postgres: creating the data folder {data}")
        # Local connections only (loopback and the socket in the data folder),
        # trusted: nothing else on the network can reach this server.
        done = subprocess.run(as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                                                "-U", "postgres", "-E", "UTF8"]), capture_output=True, text=True)
        if done.returncode != 0:
            raise Refused(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    if postgres_running(setup):
        say(f"postgres: already running on 127.0.0.1:{setup.pg_port} ({data})")
    else:
        if port_in_use("127.0.0.1", setup.pg_port):
            raise Refused(f"port {setup.pg_port} is taken by another program: pass --pg-port")
        options = f"-p {setup.pg_port} -k {setup.pg_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        pg_ctl(setup, "-o", options, "-l", str(setup.pg_dir / "postgres.log"), "-w", "-t", "60", "start")
        say(f"postgres: started on 127.0.0.1:{setup.pg_port} ({data}; log {setup.pg_dir / 'postgres.log'})")
    if not psql(setup, f"SELECT 1 FROM pg_database WHERE datname = '{setup.database}'"):
        psql(setup, f'CREATE DATABASE "{setup.database}"')
        say(f"postgres: created database {setup.database}")


def stop_postgres(setup: Setup) -> None:
    if not setup.local_postgres:
        say("postgres: not managed here")
    elif not postgres_running(setup):
        say("postgres: not running")
    else:
        pg_ctl(setup, "-m", "fast", "-w", "-t", "60", "stop")
        say("postgres: stopped")


def redact(url: str) -> str:
    """The URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user_pass = head.partition("//")
    return f"{scheme}//{user_pass.split(':', 1)[0]}:***@{tail}"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


# ---- the Prefect server --------------------------------------------------------

def prefect_env(setup: Setup, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": setup.api_url, "PROJECT_DIR": str(REPO), **extra}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def api(setup: Setup, method: str, path: str, body: dict | None = None, timeout: float = 10):
    import httpx

    response = httpx.request(method, setup.api_url + path, json=body, timeout=timeout)
    response.raise_for_status()
    return response.json() if response.content else None


def server_answers(setup: Setup) -> bool:
    try:
        return api(setup, "GET", "/health", timeout=3) is True
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


def prefect_cli(setup: Setup, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=prefect_env(setup),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Refused(f"prefect {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def start_server(setup: Setup, wait_s: float = 180) -> None:
    pid = read_pid(setup, "server", "server start")
    if pid and server_answers(setup):
        say(f"server: already running (pid {pid}) at {setup.api_url}")
    else:
        if pid:
            raise Refused(f"server: process {pid} runs but does not answer at {setup.api_url}; "
                          f"see {setup.log('server')}, or stop it first (stop server)")
        if setup.local_postgres and not postgres_running(setup):
            raise Refused(f"server: PostgreSQL is not running (data folder {setup.pg_dir / 'data'}): "
                          "start it first (start postgres), or use --database-url for an existing server")
        if port_in_use("127.0.0.1", setup.port):
            raise Refused(f"server: port {setup.port} is taken by another program: pass --port")
        # Loopback only: the server has no authentication, and on one host
        # nothing else needs to reach it (docs/operations.md, "Run on several GPU
        # machines", for a server other hosts' workers use).
        args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(setup.port)]
        if not setup.ui:
            args.append("--no-ui")
        pid = launch(setup, "server", args, prefect_env(setup, PREFECT_API_DATABASE_CONNECTION_URL=setup.connection_url))
        deadline = time.monotonic() + wait_s
        while not server_answers(setup):
            if not alive(pid):
                raise Refused(f"server: exited at start-up; see {setup.log('server')}")
            if time.monotonic() > deadline:
                raise Refused(f"server: no answer at {setup.api_url} after {wait_s:.0f} s; see {setup.log('server')}")
            time.sleep(0.5)
        say(f"server: started (pid {pid}) at {setup.api_url} on {redact(setup.connection_url)}; log {setup.log('server')}")
    deploy(setup, force=False)


def declared_deployments() -> set[str]:
    import yaml

    return {d["name"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


def deploy(setup: Setup, force: bool) -> None:
    """The work pool, the deployments of prefect.yaml and the automations.
    Without `force`, only what is missing is created: deploying again would
    reset what users change on the server (a paused schedule, say)."""
    import httpx

    def exists(path: str) -> bool:
        try:
            api(setup, "GET", path)
            return True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            return False

    if not exists(f"/work_pools/{setup.pool}"):
        prefect_cli(setup, "work-pool", "create", setup.pool, "--type", "process")
        say(f"server: created work pool {setup.pool}")
    missing = declared_deployments() - {d["name"] for d in api(setup, "POST", "/deployments/filter", {})}
    if force or missing:
        prefect_cli(setup, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
        say(f"server: deployed {PREFECT_FILE.relative_to(REPO)}")
    for automation in automations(setup):
        same_name = [a for a in api(setup, "POST", "/automations/filter", {}) if a["name"] == automation["name"]]
        for extra in same_name[1:]:  # left by an older, non-idempotent set-up
            api(setup, "DELETE", f"/automations/{extra['id']}")
        if same_name and force:
            api(setup, "PUT", f"/automations/{same_name[0]['id']}", automation)
        elif not same_name:
            api(setup, "POST", "/automations/", automation)
        else:
            continue
        say(f"server: automation {automation['name']} in place "
            f"(a run without heartbeat for {setup.heartbeat_window} s is marked Crashed)")


def automations(setup: Setup) -> list[dict]:
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    declared = yaml.safe_load(AUTOMATIONS_FILE.read_text())["automations"]
    result = []
    for automation in declared:
        if automation["name"] == "crash-zombie-flow-runs":
            window = int(setup.heartbeat_window)
            automation["trigger"]["within"] = window
            for action in automation["actions"]:
                action["message"] = action["message"].replace("90 s", f"{window} s")
        result.append(AutomationCore.model_validate(automation).model_dump(mode="json", exclude_unset=True))
    return result


def stop_server(setup: Setup) -> None:
    pid = read_pid(setup, "server", "server start")
    if pid is None:
        say("server: not running")
        return
    # Prefect's server stops cleanly on SIGINT (as on Ctrl-C); its uvicorn
    # child is in the same session.
    group = [pid, *descendants(pid)]
    terminate(group, (signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace=15)
    setup.pid_file("server").unlink(missing_ok=True)
    say("server: stopped")


# ---- workers -------------------------------------------------------------------------

def start_workers(setup: Setup) -> None:
    if not server_answers(setup):
        raise Refused(f"workers: the Prefect server does not answer at {setup.api_url}: start it first (start server)")
    gpus = gpu_indices()
    for index, name in enumerate(setup.worker_names()):
        pid = read_pid(setup, name, "worker start")
        if pid:
            say(f"worker {name}: already running (pid {pid})")
            continue
        control = name.endswith("-control")
        # One run at a time per GPU worker; the controller only waits on trials.
        args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", setup.pool, "--name", name,
                "--work-queue", "control" if control else "gpu"]
        extra = {}
        if not control:
            args += ["--limit", "1"]
            if gpus:
                extra["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
        pid = launch(setup, name, args, prefect_env(setup, **extra))
        say(f"worker {name}: started (pid {pid}{', GPU ' + extra['CUDA_VISIBLE_DEVICES'] if extra else ''}); "
            f"log {setup.log(name)}")


def stop_workers(setup: Setup) -> None:
    """Stop each worker and the flow runs it started. Prefect runs each flow
    run in its own session, so a stopped worker would leave them running
    without anyone to report them; they are ended and marked Crashed here
    (run them again to resume)."""
    host = socket.gethostname()
    for name in setup.worker_names():
        pid = read_pid(setup, name, "worker start")
        if pid is None:
            say(f"worker {name}: not running")
            continue
        runs = descendants(pid)
        # A worker needs two signals to stop while it has runs (the first one
        # only stops it taking new ones).
        terminate([pid], (signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace=5)
        terminate(runs, (signal.SIGTERM, signal.SIGKILL), grace=15)
        setup.pid_file(name).unlink(missing_ok=True)
        crashed = mark_crashed(setup, {str(p) for p in runs} | {f"{host}:{p}" for p in runs}) if runs else []
        say(f"worker {name}: stopped" + (f"; its flow runs {', '.join(crashed)} marked Crashed" if crashed else ""))


def mark_crashed(setup: Setup, infrastructure_pids: set[str]) -> list[str]:
    """Mark Crashed the flow runs whose process was one of these (a process
    worker records the pid, other set-ups "host:pid")."""
    if not server_answers(setup):
        return []
    running = api(setup, "POST", "/flow_runs/filter",
                  {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}, "limit": 200})
    names = []
    for run in running:
        if run.get("infrastructure_pid") in infrastructure_pids:
            api(setup, "POST", f"/flow_runs/{run['id']}/set_state",
                {"state": {"type": "CRASHED", "message": "stopped with deployments/single_host.py stop; run it again to resume"},
                 "force": True})
            names.append(run["name"])
    return names


# ---- status -----------------------------------------------------------------------------

def status(setup: Setup) -> int:
    """One line per part; 0 when every part runs."""
    problems = 0
    if setup.local_postgres:
        if not (setup.pg_dir / "data" / "PG_VERSION").is_file():
            say(f"postgres: missing (no data folder in {setup.pg_dir}; `start` creates it)")
            problems += 1
        elif postgres_running(setup):
            say(f"postgres: running on 127.0.0.1:{setup.pg_port} ({setup.pg_dir / 'data'})")
        else:
            say(f"postgres: stopped ({setup.pg_dir / 'data'})")
            problems += 1
    else:
        say(f"postgres: not managed here ({redact(setup.database_url)})")
    pid = read_pid(setup, "server", "server start")
    answers = server_answers(setup)
    if answers:
        deployments = api(setup, "POST", "/deployments/filter", {})
        names = {a["name"] for a in api(setup, "POST", "/automations/filter", {}) if a["enabled"]}
        missing = [a["name"] for a in automations(setup) if a["name"] not in names]
        say(f"server: answering at {setup.api_url}" + (f" (pid {pid})" if pid else " (not started by this script)")
            + f"; {len(deployments)} deployments; automations: "
            + (f"MISSING {', '.join(missing)}" if missing else "crash-zombie-flow-runs enabled"))
        problems += bool(missing)
    else:
        say(f"server: {'not answering (pid ' + str(pid) + ')' if pid else 'stopped'} at {setup.api_url}")
        problems += 1
    seen = {}
    if answers:
        try:
            seen = {w["name"]: w["status"] for w in api(setup, "POST", f"/work_pools/{setup.pool}/workers/filter", {})}
        except Exception:  # noqa: BLE001 - no pool yet
            seen = {}
    for name in setup.worker_names():
        pid = read_pid(setup, name, "worker start")
        state = f"running (pid {pid})" if pid else "stopped"
        if name in seen:
            state += f", server sees it {seen[name]}"
        elif pid and answers:
            state += ", not seen by the server yet (a new worker registers within seconds)"
        say(f"worker {name}: {state}")
        problems += pid is None
    if answers:
        running = api(setup, "POST", "/flow_runs/filter",
                      {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}, "limit": 200})
        say(f"flow runs: {len(running)} running or pending")
    return 1 if problems else 0


# ---- command line ------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "status", "deploy"],
                   help="deploy: prefect.yaml and automations.yaml again, after editing them")
    p.add_argument("parts", nargs="*", metavar="PART", help="postgres, server and/or workers (default: all)")
    p.add_argument("--dir", type=Path, default=default_dir(), help="where the data folder, logs and pids live "
                   "(default: $ALEXNET_PREFECT_DIR, else ~/.alexnet-prefect, or /var/lib/alexnet-prefect for root)")
    p.add_argument("--workers", type=int, help="run workers, one run each (default: one per GPU, else 1); "
                   "plus one worker for sweep controllers")
    p.add_argument("--port", type=int, help="the server's port (default 4200)")
    p.add_argument("--pg-port", type=int, help="the local PostgreSQL's port, on 127.0.0.1 only (default 5433)")
    p.add_argument("--database-url", help="use this existing PostgreSQL instead of a local data folder "
                   "(postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE)")
    p.add_argument("--pool", help="work pool name (default alexnet-pool, as in prefect.yaml)")
    p.add_argument("--heartbeat-window", type=int, metavar="SECONDS",
                   help="a run without heartbeat for this long is marked Crashed (default 90; at least 40: "
                        "runs send one every 30 s)")
    p.add_argument("--no-ui", dest="ui", action="store_const", const=False, help="serve the API without the web UI")
    args = p.parse_args(argv)
    for part in args.parts:
        if part not in PARTS:
            p.error(f"unknown part {part!r}: choose from {', '.join(PARTS)}")
    if args.heartbeat_window is not None and args.heartbeat_window < 40:
        p.error("--heartbeat-window: at least 40 s (runs send a heartbeat every 30 s)")
    if args.workers is not None and args.workers < 1:
        p.error("--workers: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("workers", "port", "pg_port", "database_url", "pool",
                                                "heartbeat_window", "ui")}
    setup = Setup(args.dir.expanduser().absolute(), overrides)
    parts = args.parts or list(PARTS)
    try:
        if args.command == "status":
            return status(setup)
        if args.command == "deploy":
            if not server_answers(setup):
                raise Refused(f"the Prefect server does not answer at {setup.api_url}: start it first (start server)")
            setup.save()
            deploy(setup, force=True)
            return 0
        if args.command == "start":
            setup.save()
            for part in PARTS:
                if part in parts:
                    {"postgres": start_postgres, "server": start_server, "workers": start_workers}[part](setup)
            return 0
        for part in reversed(PARTS):
            if part in parts:
                {"postgres": stop_postgres, "server": stop_server, "workers": stop_workers}[part](setup)
        return 0
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
