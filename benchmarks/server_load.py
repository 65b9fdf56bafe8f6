"""How many concurrent flow runs one Prefect server takes, on PostgreSQL and
on SQLite: the same script, the same load, a fresh server and database each.

    python benchmarks/server_load.py                       # both databases, 10, 25 and 50 runs at once
    python benchmarks/server_load.py --database postgres --runs 25,50,100

For each database a fresh `prefect server start` (PostgreSQL: a temporary data
folder through deployments/single_host.py, loopback only; SQLite: Prefect's
default file in a temporary PREFECT_HOME), then for each level N: N flow runs
started at once against it from --clients client processes (async flows, so N
runs are in flight together without N Python processes), each run with
--tasks tasks that sleep 0.2 s and log a line. This is the server's side of
many workers' runs (state changes, task-run events, logs, heartbeats); it does
not train anything.

Counted per level:
- completed: flow runs that ended Completed, as the API reports them;
- HTTP 5xx: responses 5xx in the server's access log. On SQLite these are 503s:
  Prefect's server answers 503 when SQLite says "database is locked" (busy),
  so that clients retry (5 times, backing off); it logs them only with
  PREFECT_API_LOG_RETRYABLE_ERRORS=true;
- client API errors: lines of the clients' output naming a failed request
  (a 5xx they gave up on, a refused connection, ...): each is a flow run that
  raised; a level whose clients time out counts its unfinished runs as failed;
- database errors: lines of the server log naming one (OperationalError,
  deadlock, too many clients, ...).
Prints a table and one JSON line per database. The server's log is kept only
if --keep is given.

Measured (2 shared CPUs, Prefect 3.9.1, PostgreSQL 15.18, one run each, 5
tasks per flow run, 4 client processes): PostgreSQL completed all 200 runs
started at once in 33 s with no 5xx; SQLite answered 9 requests 503 at 10
runs, 102 at 50, and at 100 and 200 runs 8 and 51 runs failed on a 503 they
had retried five times (docs/operations.md, "How much one server takes").
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deployments"))

DATABASE_ERROR = re.compile(r"database is locked|OperationalError|DBAPIError|InterfaceError|deadlock detected"
                            r"|could not serialize|too many clients|remaining connection slots|QueuePool limit", re.I)
CLIENT_API_ERROR = re.compile(r"status code 5\d\d|Server error .5\d\d|HTTP Status 5\d\d|PrefectHTTPStatusError"
                              r"|ConnectError|ReadTimeout|RemoteProtocolError|Failed to send|database is locked", re.I)
ACCESS_5XX = re.compile(r'HTTP/1\.[01]" 5\d\d')
ACCESS_ANY = re.compile(r'HTTP/1\.[01]" \d\d\d')


# ---- the client: N flow runs at once in one process -------------------------------

def client(flows: int, tasks: int, offset: int) -> None:
    """Runs `flows` flow runs concurrently; prints one JSON line."""
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE, persist_result=False)
    async def step(i: int) -> int:
        await asyncio.sleep(0.2)
        get_run_logger().info("step %d", i)
        return i

    @flow(name="server-load", persist_result=False)
    async def load(index: int, tasks: int) -> int:
        get_run_logger().info("run %d: %d tasks", index, tasks)
        total = 0
        for i in range(tasks):  # one after another, as a pipeline's stages run
            total += await step(i)
        return total

    async def one(index: int) -> str:
        try:
            await load(index, tasks)
            return "ok"
        except Exception as exc:  # noqa: BLE001 - counted, not fatal
            print(f"flow run {index} raised {type(exc).__name__}: {exc}", file=sys.stderr)
            return "raised"

    async def main() -> list[str]:
        return await asyncio.gather(*[one(offset + i) for i in range(flows)])

    started = time.monotonic()
    outcomes = asyncio.run(main())
    print(json.dumps({"ok": outcomes.count("ok"), "raised": outcomes.count("raised"),
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)


# ---- servers -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A fresh Prefect server on a fresh database, stopped on exit."""

    def __init__(self, database: str, folder: Path):
        self.database, self.folder = database, folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = folder / f"server-{database}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update({"PREFECT_HOME": str(folder / f"home-{database}"), "PREFECT_API_URL": self.url,
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "INFO"})
        self.pg = None

    def __enter__(self) -> "Server":
        if self.database == "postgres":
            import single_host

            self.pg = single_host.Setup(self.folder / "pg", {"pg_port": free_port(), "database_url": None})
            self.pg.dir.mkdir(parents=True)
            self.pg.dir.chmod(0o755)
            single_host.start_postgres(self.pg)
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.pg.connection_url
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--no-ui"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.database} server did not start; see {self.log}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.pg is not None:
            import single_host

            single_host.stop_postgres(self.pg)

    def count_runs(self) -> dict[str, int]:
        import httpx

        runs = httpx.post(f"{self.url}/flow_runs/filter", json={"limit": 200, "offset": 0}, timeout=60).json()
        result, offset = {}, 0
        while runs:
            for r in runs:
                result[r["state"]["type"]] = result.get(r["state"]["type"], 0) + 1
            offset += len(runs)
            runs = httpx.post(f"{self.url}/flow_runs/filter", json={"limit": 200, "offset": offset}, timeout=60).json()
        return result

    def log_text(self, since: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")


def level(server: Server, runs: int, tasks: int, clients: int, timeout: float) -> dict:
    """N runs at once; what the server and the clients saw."""
    since = server.log.stat().st_size
    before = server.count_runs()
    shares = [runs // clients + (i < runs % clients) for i in range(clients)]
    started = time.monotonic()
    procs, offset = [], 0
    for share in filter(None, shares):
        procs.append(subprocess.Popen([sys.executable, __file__, "--client", str(share), "--tasks", str(tasks),
                                       "--offset", str(offset)], env=server.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
        offset += share
    ok = raised = client_errors = 0
    client_lines = []
    for proc, share in zip(procs, filter(None, shares)):
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raised += share
            client_lines.append(f"client of {share} runs timed out after {timeout:.0f} s")
            continue
        summary = next((json.loads(line) for line in out.splitlines() if line.startswith("{")), None)
        if summary is None:
            raised += share
            client_lines.append(f"client exited {proc.returncode} without a summary: {err[-500:]}")
        else:
            ok += summary["ok"]
            raised += summary["raised"]
        matches = [line for line in err.splitlines() if CLIENT_API_ERROR.search(line)]
        client_errors += len(matches)
        client_lines += matches[:5]
    seconds = time.monotonic() - started
    time.sleep(3)  # the last events and logs reach the database
    after = server.count_runs()
    text = server.log_text(since)
    states = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {"runs": runs, "tasks_per_run": tasks, "seconds": round(seconds, 1),
            "runs_per_s": round(runs / seconds, 2), "completed": states.get("COMPLETED", 0),
            "not_completed": runs - states.get("COMPLETED", 0), "client_raised": raised,
            "requests": len(ACCESS_ANY.findall(text)), "http_5xx": len(ACCESS_5XX.findall(text)),
            "client_api_errors": client_errors,
            "database_errors": sum(1 for line in text.splitlines() if DATABASE_ERROR.search(line)),
            "examples": client_lines[:5] + [line[:200] for line in text.splitlines() if DATABASE_ERROR.search(line)][:3]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database", choices=["postgres", "sqlite", "both"], default="both")
    p.add_argument("--runs", default="10,25,50", help="levels: flow runs at once, comma-separated")
    p.add_argument("--tasks", type=int, default=5, help="tasks per flow run")
    p.add_argument("--clients", type=int, default=4, help="client processes sharing each level's runs")
    p.add_argument("--timeout", type=float, default=600, help="seconds one level may take")
    p.add_argument("--keep", action="store_true", help="keep the servers' logs (the folder is printed)")
    p.add_argument("--client", type=int, help=argparse.SUPPRESS)
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client is not None:
        client(args.client, args.tasks, args.offset)
        return 0
    levels = [int(n) for n in args.runs.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="server-load-"))
    folder.chmod(0o755)  # PostgreSQL runs as the postgres user when this runs as root
    results = {}
    try:
        for database in (["postgres", "sqlite"] if args.database == "both" else [args.database]):
            with Server(database, folder) as server:
                results[database] = [level(server, n, args.tasks, args.clients, args.timeout) for n in levels]
            print(json.dumps({"database": database, "cpus": os.cpu_count(), "levels": results[database]}), flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{'database':<9} {'runs at once':>12} {'completed':>9} {'seconds':>8} {'requests':>8} "
          f"{'HTTP 5xx':>8} {'client API errors':>17} {'database errors':>15}")
    for database, rows in results.items():
        for r in rows:
            print(f"{database:<9} {r['runs']:>12} {r['completed']:>9} {r['seconds']:>8} {r['requests']:>8} "
                  f"{r['http_5xx']:>8} {r['client_api_errors']:>17} {r['database_errors']:>15}")
            for example in r["examples"]:
                print(f"{'':<10}e.g. {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
