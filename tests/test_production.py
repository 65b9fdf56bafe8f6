"""Production set-up for real: PostgreSQL on a temporary folder (initdb and
pg_ctl, loopback only), a Prefect server on it and 3 run workers plus a sweep
controller, all started by deployments/single_host.py as a user would; the
zombie-run automation it creates; and failures in the middle of work.

1. The server stopped in the middle of a run and started again: the run
   finishes (or the same command resumes it), and nothing written is lost
   (database records, checkpoints).
2. A host dies in the middle of a sweep trial (kill -9 of its worker and the
   run it started). While the server waits for the missing heartbeats, many
   runs go at once: a 6-trial sweep, evaluate-latest and full-run/on-demand,
   all Completed, with no database error and no HTTP 5xx in the server's or
   the workers' logs. The dead host's run is marked Crashed by the automation
   within the heartbeat window, the sweep's table says so, and running the
   sweep again finishes that trial from its last complete epoch while the
   other trial is a cache hit.

    pytest tests/test_production.py       # 3.5-4.5 min on 2 CPUs shared with other jobs

Needs PostgreSQL's server programs (initdb, pg_ctl; Debian's `postgresql`);
skipped without them unless ALEXNET_REQUIRE_POSTGRES=1 (.ci/run sets it).
Every process is in its own session and is killed when the module ends,
however it ends; checkpoints (~0.7 GB per epoch) are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deployments" / "single_host.py"
sys.path.insert(0, str(SCRIPT.parent))
import single_host  # noqa: E402

HEARTBEAT_S, WINDOW_S = 30, 90  # prefect.yaml, automations.yaml: what users get
# A line of a server or worker log that means a database error or an HTTP 5xx.
DATABASE_ERROR = re.compile(r"OperationalError|DBAPIError|InterfaceError|IntegrityError|sqlalchemy\.exc|asyncpg\.exceptions"
                            r"|database is locked|deadlock detected|could not serialize|too many clients"
                            r"|remaining connection slots|QueuePool limit|Duplicate task_run, discarding", re.I)
# Not an error: Prefect's task-run recorder retries a bulk upsert once when two
# of its batches race on the same task run (a known, handled race; the second
# attempt sees the other's row). Had the retry failed too, it would log
# "Duplicate task_run, discarding event" (above) or raise.
HANDLED_RETRY = re.compile(r"INFO .*Retrying bulk task_run upsert after IntegrityError \(attempt 1/2\)")
SERVER_ERROR = re.compile(r"\| (ERROR|CRITICAL) |Traceback \(most recent call last\)")
HTTP_5XX = re.compile(r'HTTP/1\.[01]" 5\d\d|status code 5\d\d|Server error .5\d\d|\b5\d\d (Internal Server Error|'
                      r"Service Unavailable|Bad Gateway|Gateway Timeout)")
SMOKE = {"preset": "smoke", "dataset": "cifar10", "verify": False, "weights": "none", "batch_size": 10,
         "image_size": 64, "device": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, size, mtime_ns) of the complete checkpoints in `folder`."""
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.glob("alexnet-*.pt"))} if folder.is_dir() else {}


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class Production:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.state = root / "single-host"
        self.shared = root / "shared"  # stands for the filesystem every worker host mounts
        self.url = None

    # -- the script, as a user runs it
    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(self.state)], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, f"single_host.py {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    @property
    def setup(self) -> single_host.Setup:
        return single_host.Setup(self.state, {})

    # -- the API
    def api(self, method: str, path: str, body: dict | None = None):
        import httpx

        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def trigger(self, deployment: str, params: dict) -> str:
        found = self.api("GET", f"/deployments/name/{deployment}")
        return self.api("POST", f"/deployments/{found['id']}/create_flow_run", {"parameters": params})["id"]

    def run(self, flow_run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{flow_run_id}")

    def wait(self, flow_run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(flow_run_id)
            if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {run['name']} still {run['state']['name']} after {timeout} s\n" + self.tails())
            time.sleep(1)

    def assert_completed(self, run: dict) -> None:
        assert run["state"]["type"] == "COMPLETED", (
            f"flow run {run['name']}: {run['state']['name']}: {run['state'].get('message')}\n" + self.tails())

    def logs(self, flow_run_id: str) -> list[str]:
        records = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return [r["message"] for r in records]

    def task_states(self, flow_run_id: str) -> dict[str, str]:
        runs = self.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return {r["name"]: r["state"]["name"] for r in runs}

    def inventory(self) -> dict[str, set]:
        """What the database holds, by id: nothing of it may be lost. (Not the
        future runs of the cron schedules: the scheduler replaces those.)"""
        started = {"flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}}, "limit": 200}
        return {"flow_runs": {r["id"] for r in self.api("POST", "/flow_runs/filter", started)},
                "deployments": {d["id"] for d in self.api("POST", "/deployments/filter", {})},
                "automations": {a["id"] for a in self.api("POST", "/automations/filter", {})},
                "work_pools": {p["id"] for p in self.api("POST", "/work_pools/filter", {})}}

    # -- logs
    def log_files(self) -> list[Path]:
        return sorted((self.state / "logs").glob("*.log"))

    def offsets(self) -> dict[Path, int]:
        return {path: path.stat().st_size for path in self.log_files()}

    def bad_lines(self, since: dict[Path, int]) -> tuple[list[str], int]:
        """Database errors and HTTP 5xx in the logs since `since` (and any
        error or traceback of the server's), and how many handled retries."""
        bad, retries = [], 0
        for path in self.log_files():
            with open(path, "rb") as f:
                f.seek(since.get(path, 0))
                for line in f.read().decode(errors="replace").splitlines():
                    if HANDLED_RETRY.search(line):
                        retries += 1
                    elif (DATABASE_ERROR.search(line) or HTTP_5XX.search(line)
                          or (path.name == "server.log" and SERVER_ERROR.search(line))):
                        bad.append(f"{path.name}: {line[:300]}")
        return bad, retries

    def tails(self, lines: int = 20) -> str:
        text = []
        for path in self.log_files():
            content = path.read_text(errors="replace").splitlines()
            text.append(f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(content[-lines:]))
        return "\n".join(text)


def _kill_everything(state: Path) -> None:
    """Whatever the script started, and whatever those started, however the
    test ended (the script's `stop` ran first where it could)."""
    for pid_file in (state / "pids").glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        for victim in [pid, *single_host.descendants(pid)]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
    data = state / "postgres" / "data"
    if (data / "postmaster.pid").is_file():
        pg_ctl = single_host.pg_bin() / "pg_ctl"
        subprocess.run(single_host.as_postgres_user([str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, check=False)


def test_refuses_naming_the_missing_part(tmp_path, monkeypatch):
    """Without PostgreSQL's programs, a running database or a server, the
    script says what is missing and what to do; nothing is started."""
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(tmp_path / "s"), "--port",
                               str(_free_port()), "--pg-port", str(_free_port())], capture_output=True, text=True,
                              timeout=60)

    status = run("status")
    assert status.returncode == 1 and "postgres: missing" in status.stdout and "server: stopped" in status.stdout
    workers = run("start", "workers")
    assert workers.returncode == 2 and "server does not answer" in workers.stderr and "start server" in workers.stderr
    server = run("start", "server")
    assert server.returncode == 2 and "PostgreSQL is not running" in server.stderr and "start postgres" in server.stderr
    assert not (tmp_path / "s" / "pids").exists() or not list((tmp_path / "s" / "pids").iterdir())

    monkeypatch.setenv("PG_BIN", str(tmp_path / "nowhere"))
    monkeypatch.setattr(single_host.shutil, "which", lambda name: None)
    monkeypatch.setattr(single_host.glob, "glob", lambda pattern: [])
    with pytest.raises(single_host.Refused, match="apt-get install -y postgresql.*--database-url"):
        single_host.pg_bin()


@pytest.fixture(scope="module")
def production(cifar_archive_dir):
    try:
        single_host.pg_bin()
        if os.geteuid() == 0:
            single_host.as_postgres_user(["true"])
    except single_host.Refused as exc:
        if os.environ.get("ALEXNET_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    # Under /tmp, not pytest's tmp_path: that is private to root, and the
    # postgres user must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="alexnet-production-"))
    root.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The server logs every request with its status (uvicorn's access log).
        "PREFECT_SERVER_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "shared" / "prefect-results"),
        "ALEXNET_PIPELINE_RUNS_ROOT": str(root / "shared" / "runs"),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # several trainings share two cores
    })
    prod = Production(root, env)
    data = root / "shared" / "data"
    data.mkdir(parents=True)
    shutil.copy(cifar_archive_dir / "cifar-10-python.tar.gz", data)
    prod.data_dir = str(data)
    try:
        started = time.monotonic()
        done = prod.script("start", "--workers", "3", "--port", str(_free_port()), "--pg-port", str(_free_port()),
                           "--no-ui")
        print(f"\n{done.stdout}set-up started in {time.monotonic() - started:.1f} s")
        prod.url = prod.setup.api_url
        prod.env["PREFECT_API_URL"] = prod.url
        # The nightly and weekly schedules must not start the real job mid-test.
        for name in ("full-run/full-run-nightly", "evaluate-latest/evaluate-latest"):
            deployment = prod.api("GET", f"/deployments/name/{name}")
            prod.api("PATCH", f"/deployments/{deployment['id']}", {"paused": True})
        yield prod
    finally:
        try:
            print(prod.script("stop", check=False).stdout)
        finally:
            _kill_everything(prod.state)
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_set_up_reports_every_part(production):
    deadline = time.monotonic() + 120
    while True:  # a worker registers with the server at its first poll
        status = production.script("status")
        if status.stdout.count("server sees it ONLINE") == 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "postgres: running" in status.stdout and "automations: crash-zombie-flow-runs enabled" in status.stdout
    assert status.stdout.count("server sees it ONLINE") == 4, status.stdout  # 3 run workers, 1 sweep controller
    # The server's records are in PostgreSQL; the runs get heartbeats every 30 s.
    deployments = subprocess.run([str(single_host.pg_bin() / "psql"), "-h", "127.0.0.1", "-p",
                                  str(production.setup.pg_port), "-U", "postgres", "-d", "prefect", "-tAc",
                                  "SELECT count(*) FROM deployment"], capture_output=True, text=True, check=True)
    assert deployments.stdout.strip() == "5"  # prefect.yaml: nightly, on-demand, evaluate-latest, predict, sweep
    on_demand = production.api("GET", "/deployments/name/full-run/on-demand")
    assert on_demand["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_S)
    (automation,) = [a for a in production.api("POST", "/automations/filter", {}) if a["name"] == "crash-zombie-flow-runs"]
    trigger = automation["trigger"]
    assert (trigger["posture"], trigger["within"], trigger["for_each"]) == ("Proactive", WINDOW_S, ["prefect.resource.id"])
    assert set(trigger["after"]) == {"prefect.flow-run.heartbeat"}
    assert automation["actions"][0]["type"] == "change-flow-run-state" and automation["actions"][0]["state"] == "CRASHED"
    # Starting again changes nothing and duplicates nothing.
    again = production.script("start")
    assert "already running" in again.stdout
    assert len([a for a in production.api("POST", "/automations/filter", {}) if a["name"] == "crash-zombie-flow-runs"]) == 1


@pytest.mark.slow
def test_server_restart_in_the_middle_of_a_run(production):
    started = time.monotonic()
    out = production.shared / "runs" / "restart"
    params = {**SMOKE, "data_dir": production.data_dir, "epochs": 2, "out": str(out)}
    flow_run_id = production.trigger("full-run/on-demand", params)
    # In the middle: the run holds its run folder's lock (training has begun).
    deadline = time.monotonic() + 300
    while not (production.run(flow_run_id)["state"]["type"] == "RUNNING" and (out / ".lock").exists()):
        assert time.monotonic() < deadline, "the run did not start training within 300 s\n" + production.tails()
        time.sleep(0.5)
    before = production.inventory()
    first_run_id, logs_before = flow_run_id, len(production.logs(flow_run_id))
    checkpoints_before = _files(out / "checkpoints")

    production.script("stop", "server")
    assert not single_host.server_answers(production.setup)
    time.sleep(5)
    production.script("start", "server")

    run = production.wait(flow_run_id, timeout=400)
    if run["state"]["type"] != "COMPLETED":
        # Resumable with the same command: the same deployment, the same parameters.
        print(f"\nafter the restart the run ended {run['state']['name']}: {run['state'].get('message')}; running it again")
        cli = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "full-run/on-demand", "--params",
                              json.dumps(params)], cwd=REPO, env=production.env, capture_output=True, text=True)
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", cli.stdout + cli.stderr).group(1)
        run = production.wait(flow_run_id, timeout=400)
    else:
        print("\nthe run finished through the server restart")
    production.assert_completed(run)

    after = production.inventory()
    for kind, ids in before.items():
        assert ids <= after[kind], f"{kind} lost across the restart: {ids - after[kind]}"
    assert len(production.logs(first_run_id)) >= logs_before
    now = _files(out / "checkpoints")
    for name, identity in checkpoints_before.items():
        assert now.get(name) == identity, f"{name} was rewritten or lost across the restart"
    assert len(pd.read_csv(out / "accuracy.csv")) == 2 and (out / "report.md").is_file()
    production.finished_run = out
    print(f"server restart test: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_many_runs_at_once_while_a_dead_host_is_detected(production):
    started = time.monotonic()
    finished_run = getattr(production, "finished_run", None)
    if finished_run is None:
        pytest.skip("needs the run folder of test_server_restart_in_the_middle_of_a_run")
    smoke = {**SMOKE, "data_dir": production.data_dir}

    # A sweep of two trials: trial 1 has three epochs and its host will die
    # during the second; trial 2 has one.
    dying_dir = production.shared / "sweeps" / "host-dies"
    dying_params = {"base": {**smoke, "epochs": 1}, "trials": [{"epochs": 3, "seed": 1}, {"seed": 2}],
                    "out": str(dying_dir), "poll_interval_s": 1}
    dying_sweep = production.trigger("sweep/sweep", dying_params)
    trial_dir = dying_dir / "trial-01"
    deadline = time.monotonic() + 400
    while not (trial_dir / "checkpoints" / "alexnet-01.pt").exists():
        assert time.monotonic() < deadline, "trial 1 did not finish its first epoch within 400 s\n" + production.tails()
        time.sleep(0.2)
    sweep_name = production.run(dying_sweep)["name"]
    (trial_run,) = production.api("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"{sweep_name}-trial-01"]}}})
    engine = int(str(trial_run["infrastructure_pid"]).rsplit(":", 1)[-1])
    worker = int(Path(f"/proc/{engine}/stat").read_text().rsplit(")", 1)[1].split()[1])
    workers = {int(p.read_text()): p.stem for p in (production.state / "pids").glob("*-gpu*.pid")}
    assert worker in workers, f"trial 1's process {engine} has parent {worker}, not a worker: {workers}"
    # The host dies: its worker and the run it started, at once, no clean-up
    # (killing only the worker would not do: Prefect starts each run in its
    # own session, and the run would go on and finish).
    for victim in [worker, engine, *single_host.descendants(engine)]:
        os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    complete_at_kill = _files(trial_dir / "checkpoints")
    assert "alexnet-03.pt" not in complete_at_kill, complete_at_kill
    print(f"\nkilled worker {workers[worker]} and trial 1 with epochs {sorted(complete_at_kill)} complete")
    status = production.script("status", check=False)
    assert status.returncode == 1 and f"worker {workers[worker]}: stopped" in status.stdout, status.stdout
    production.script("start", "workers")  # the host is back
    print(f"{time.monotonic() - started:.0f} s: trial 1 killed after epoch 1, its worker started again")

    # Meanwhile, at once: a 6-trial sweep, evaluate-latest, and a full run.
    since = production.offsets()
    (finished_run / "report.md").unlink()
    busy_dir = production.shared / "sweeps" / "busy"
    busy_sweep = production.trigger("sweep/sweep", {"base": {**smoke, "epochs": 1, "subset": 10},
                                                    "grid": {"lr": [1e-4, 3e-4, 1e-3], "seed": [0, 1]},
                                                    "out": str(busy_dir), "poll_interval_s": 1})
    evaluation = production.trigger("evaluate-latest/evaluate-latest", {"run_dir": str(finished_run)})
    on_demand_dir = production.shared / "runs" / "on-demand"
    on_demand = production.trigger("full-run/on-demand", {**smoke, "epochs": 1, "seed": 5, "out": str(on_demand_dir)})
    for flow_run_id in (busy_sweep, evaluation, on_demand):
        production.assert_completed(production.wait(flow_run_id, timeout=900))
    table = pd.read_csv(busy_dir / "sweep.csv")
    assert len(table) == 6 and list(table["state"]) == ["Completed"] * 6, table.to_string()
    for row in table.itertuples():
        production.assert_completed(production.run(row.flow_run_id))
        assert (Path(row.run_dir) / "report.md").is_file() and len(pd.read_csv(Path(row.run_dir) / "accuracy.csv")) == 1
    assert (finished_run / "report.md").is_file() and (on_demand_dir / "report.md").is_file()
    bad, retries = production.bad_lines(since)
    assert not bad, "database errors or HTTP 5xx while the runs went at once:\n" + "\n".join(bad[:30])
    requests = sum(len(re.findall(r'HTTP/1\.[01]" \d\d\d', path.read_text(errors="replace")[since.get(path, 0):]))
                   for path in production.log_files() if path.name == "server.log")
    print(f"8 runs and 6 trials at once: all Completed in {time.monotonic() - started:.0f} s since the start of this "
          f"test; {requests} API requests, none answered 5xx; no database error ({retries} task-run upserts "
          "retried by Prefect after a race, as it is meant to)")

    # The dead host's run: Crashed by the automation, within the window.
    production.wait(trial_run["id"], timeout=HEARTBEAT_S + WINDOW_S + 120)
    crashed = production.run(trial_run["id"])
    assert crashed["state"]["type"] == "CRASHED" and "heartbeat" in crashed["state"]["message"], crashed["state"]
    heartbeats = production.api("POST", "/events/filter", {"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{trial_run['id']}"]}}, "limit": 50})["events"]
    last_heartbeat = max(_time(e["occurred"]) for e in heartbeats)
    crashed_at = _time(crashed["state"]["timestamp"])
    print(f"trial 1 marked Crashed {crashed_at - killed_at:.0f} s after the kill, "
          f"{crashed_at - last_heartbeat:.0f} s after its last heartbeat (window {WINDOW_S} s)")
    assert WINDOW_S - 5 <= crashed_at - last_heartbeat <= WINDOW_S + 60
    production.assert_completed(production.wait(dying_sweep, timeout=120))
    print(f"{time.monotonic() - started:.0f} s: the sweep whose trial crashed ended")
    rows = pd.read_csv(dying_dir / "sweep.csv").set_index("trial")
    assert rows.loc[1, "state"] == "Crashed" and "heartbeat" in rows.loc[1, "error"], rows.to_string()
    assert rows.loc[2, "state"] == "Completed", rows.to_string()
    other_checkpoints = _files(dying_dir / "trial-02" / "checkpoints")

    # The same sweep again: trial 1 resumes after its last complete epoch,
    # trial 2 is a cache hit.
    again = production.trigger("sweep/sweep", dying_params)
    production.assert_completed(production.wait(again, timeout=600))
    rows = pd.read_csv(dying_dir / "sweep.csv").set_index("trial")
    assert list(rows["state"]) == ["Completed", "Completed"], rows.to_string()
    last_complete = len(complete_at_kill)
    resumed = production.logs(rows.loc[1, "flow_run_id"])
    assert any(f"after epoch {last_complete} of 3" in line for line in resumed), "\n".join(resumed)
    now = _files(trial_dir / "checkpoints")
    # Retention keeps the selected and the last epoch's checkpoints; those
    # complete at the kill and still kept were not written again.
    kept_since = {k: v for k, v in now.items() if k in complete_at_kill}
    assert kept_since == {k: complete_at_kill[k] for k in kept_since}, "a complete epoch was trained again"
    assert "alexnet-03.pt" in now and len(now) <= 2 and len(pd.read_csv(trial_dir / "accuracy.csv")) == 3
    other_tasks = production.task_states(rows.loc[2, "flow_run_id"])
    assert [state for name, state in other_tasks.items() if name.startswith("fine-tune")] == ["Cached"], other_tasks
    assert _files(dying_dir / "trial-02" / "checkpoints") == other_checkpoints
    print(f"host-death test: {time.monotonic() - started:.1f} s")
