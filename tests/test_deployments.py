"""The deployments for real: a Prefect server on 127.0.0.1, the process work
pool, `prefect deploy` from deployments/prefect.yaml, and workers laid out as
in docs/operations.md, "Run on several GPU machines" (two "GPU" workers that take one run each, one
controller worker for the sweep). Then a smoke-sized full run, the evaluation
of its folder, and a sweep whose trials must run at the same time on both
GPU workers; one trial is broken on purpose and must be reported as failed.

    pytest -m slow tests/test_deployments.py

Every process the test starts is in its own process group and is killed
(with whatever it started) when the test ends, however it ends.
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
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
POOL = "alexnet-pool"
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every process below `pid` (a flow run started by a worker, say): the same
# walk of /proc that deployments/single_host.py stops its parts with.
from deployments.single_host import descendants as _descendants  # noqa: E402


def _took(worker_log: Path, flow_run_id: str) -> bool:
    """Whether the worker ran the flow run: idle workers all try to submit a
    new run, and the server aborts all but one."""
    text = worker_log.read_text(errors="replace")
    return (f"submitting flow run '{flow_run_id}'" in text
            and f"Aborted submission of flow run '{flow_run_id}'" not in text)


class Processes:
    """The long-running processes this test starts, each in its own process
    group, with their output in a log file."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=REPO, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append((name, proc))
        return log

    def stop_all(self) -> None:
        # Workers before the server, so no worker reports a vanished server.
        for _, proc in reversed(self.started):
            group = _descendants(proc.pid)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in [proc.pid, *group]:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            for pid in group:  # in case one outlived its parent
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def tails(self, lines: int = 25) -> str:
        text = []
        for name, _ in self.started:
            content = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            text.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(content[-lines:]))
        return "\n".join(text)


class Server:
    def __init__(self, url: str, env: dict[str, str], processes: Processes, shared: Path):
        self.url, self.env, self.processes = url, env, processes
        self.shared = shared  # stands for the filesystem every worker host mounts

    def api(self, method: str, path: str, body: dict | None = None):
        import httpx

        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
        done = subprocess.run([*PREFECT, *args], check=False, cwd=REPO, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def trigger(self, deployment: str, params: dict) -> str:
        """`prefect deployment run`, as docs/operations.md shows; the flow run's id."""
        output = self.cli("deployment", "run", deployment, "--params", json.dumps(params))
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
        assert match, output
        return match.group(1)

    def wait(self, flow_run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {run['name']} still {run['state']['name']} after {timeout} s\n"
                            + self.processes.tails())
            time.sleep(1)

    def assert_completed(self, run: dict) -> None:
        assert run["state"]["type"] == "COMPLETED", (
            f"flow run {run['name']}: {run['state']['name']}: {run['state'].get('message')}\n" + self.processes.tails())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    # Nothing from the caller's Prefect set-up (a profile, the test harness) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "shared" / "prefect-results"),
        "ALEXNET_PIPELINE_RUNS_ROOT": str(root / "shared" / "runs"),
        "PROJECT_DIR": str(REPO),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        # Two trainings share two cores here: one thread each, not two each.
        "OMP_NUM_THREADS": "1",
    })
    processes = Processes(root, env)
    try:
        processes.start("server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"])
        deadline = time.monotonic() + 120
        import httpx

        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not answer within 120 s\n" + processes.tails()
            time.sleep(0.5)
        yield Server(url, env, processes, root / "shared")
    finally:
        processes.stop_all()
        # Each checkpoint is ~230 MB; the logs stay for a post-mortem.
        for checkpoint in (root / "shared").rglob("*.pt"):
            checkpoint.unlink()


def test_deploy_schedule_and_sweep_across_two_workers(server, cifar_data_dir):
    started = time.monotonic()
    env = server.env
    server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
    # Deployed from a shell whose PROJECT_DIR exists nowhere: the deployments
    # must not keep it (Prefect fills "{{ $PROJECT_DIR }}" in at deploy time);
    # each worker's own environment decides, as on hosts whose clones differ.
    server.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE),
               env={**env, "PROJECT_DIR": "/nonexistent/clone-on-deploy-host"})

    # The layout of docs/operations.md: one worker per GPU taking one run at a
    # time from the `gpu` queue, and a controller worker for the sweep.
    worker_logs = {}
    for name in ("gpu-0", "gpu-1"):
        worker_logs[name] = server.processes.start(name, [*PREFECT, "worker", "start", "--pool", POOL, "--name", name,
                                                          "--work-queue", "gpu", "--limit", "1"])
    server.processes.start("control", [*PREFECT, "worker", "start", "--pool", POOL, "--name", "control",
                                       "--work-queue", "control"])

    # The nightly schedule is registered with the declared cron and time zone,
    # inactive (as the weekly evaluation's): deploying starts nothing by itself.
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    nightly = server.api("GET", "/deployments/name/full-run/full-run-nightly")
    schedule = nightly["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == (declared["full-run-nightly"]["schedules"][0]["cron"],
                                                        declared["full-run-nightly"]["schedules"][0]["timezone"])
    assert not nightly["schedules"][0]["active"] and nightly["work_pool_name"] == POOL
    weekly = server.api("GET", "/deployments/name/evaluate-latest/evaluate-latest")["schedules"]
    assert weekly and not weekly[0]["active"]
    assert not server.api("GET", "/deployments/name/sweep/sweep")["schedules"]

    # The flow's parameters are typed from the config's fields: the server
    # refuses a bad value before any run is created (`--param epochs=3` style).
    schema = server.api("GET", "/deployments/name/full-run/on-demand")["parameter_openapi_schema"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 100000}.items() <= schema["epochs"]["anyOf"][0].items()
    assert schema["epochs"]["description"].startswith("training epochs")
    for bad in (["--param", "epochs=0"], ["--param", "device=tpu"], ["--params", json.dumps({"lr": "fast"})]):
        refused = subprocess.run([*PREFECT, "deployment", "run", "full-run/on-demand", *bad], check=False, cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=180)
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "validation failed" in output.lower(), output

    smoke = {"dataset": "cifar10", "data_dir": str(cifar_data_dir), "verify": False, "weights": "none",
             "batch_size": 10, "image_size": 64, "device": "cpu"}

    # 1. A smoke-sized run of the full_run deployment, into the runs root.
    run = server.wait(server.trigger("full-run/on-demand", {**smoke, "preset": "smoke", "epochs": 2}), timeout=180)
    server.assert_completed(run)
    runs_root = Path(env["ALEXNET_PIPELINE_RUNS_ROOT"])
    run_dirs = [p.parent for p in runs_root.glob("*/report.md")]
    assert len(run_dirs) == 1, list(runs_root.rglob("*"))
    run_dir = run_dirs[0]
    assert len(pd.read_csv(run_dir / "accuracy.csv")) == 2
    assert (run_dir / "accuracy.png").is_file() and (run_dir / "confusion.png").is_file()

    # 2. evaluate-latest with its deployed parameters (run_dir: newest run)
    # rebuilds the report from the checkpoints alone.
    (run_dir / "report.md").unlink()
    (run_dir / "confusion.png").unlink()
    run = server.wait(server.trigger("evaluate-latest/evaluate-latest", {}), timeout=120)
    server.assert_completed(run)
    assert (run_dir / "report.md").is_file() and (run_dir / "confusion.png").is_file()
    assert len(pd.read_csv(run_dir / "accuracy.csv")) == 2

    # 3. A sweep: two good trials and one whose weights file does not exist.
    sweep_dir = server.shared / "sweep"
    broken = "/nonexistent/alexnet-weights.pth"
    # One epoch each: every epoch writes a ~230 MB checkpoint plus the resume state.
    params = {"base": {**smoke, "preset": "smoke", "epochs": 1}, "grid": {"lr": [1e-4, 3e-4]},
              "trials": [{"weights": broken}], "out": str(sweep_dir), "poll_interval_s": 1}
    run = server.wait(server.trigger("sweep/sweep", params), timeout=300)
    server.assert_completed(run)
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert len(table) == 3 and (sweep_dir / "sweep.png").is_file()
    bad, good = table[table["weights"] == broken], table[table["weights"] != broken]
    assert len(bad) == 1 and bad["state"].iloc[0] == "Failed" and broken in bad["error"].iloc[0], table.to_string()
    assert list(good["state"]) == ["Completed", "Completed"], table.to_string()
    assert sorted(good["lr"]) == [1e-4, 3e-4]
    for row in good.itertuples():
        assert 0 <= row.best_test_acc <= 1 and 0 <= row.final_test_acc <= 1 and row.wall_seconds > 0
        assert len(pd.read_csv(Path(row.run_dir) / "accuracy.csv")) == 1

    # Trials ran at the same time, and they spread over both GPU workers. Which
    # two overlap depends on scheduling (the failing trial may take a worker
    # first, and the first good trial end before the second starts): some pair.
    for flow_run_id in good["flow_run_id"]:
        server.assert_completed(server.api("GET", f"/flow_runs/{flow_run_id}"))
    trial_runs = [server.api("GET", f"/flow_runs/{flow_run_id}") for flow_run_id in table["flow_run_id"]]
    spans = [(datetime.fromisoformat(t["start_time"]), datetime.fromisoformat(t["end_time"])) for t in trial_runs]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), (
        f"no two trials ran at the same time: {spans}")
    took = {name: [i for i in table["flow_run_id"] if _took(log, i)] for name, log in worker_logs.items()}
    assert all(took.values()) and sum(map(len, took.values())) == 3, (
        f"trials per GPU worker: {took}\n" + server.processes.tails())

    print(f"\nintegration test body: {time.monotonic() - started:.1f} s")


def test_predict_deployment_scores_a_folder_with_the_newest_runs_model(server):
    """The predict deployment as declared (model: the newest run under the
    runs root, an inactive nightly schedule), run by a worker on a folder."""
    from tests.fixtures import trained_image_folder_run

    env = server.env
    server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
    server.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}["predict"]
    deployment = server.api("GET", "/deployments/name/predict/predict")
    schedule = deployment["schedules"][0]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == (
        declared["schedules"][0]["cron"], declared["schedules"][0]["timezone"])
    assert not schedule["active"], "the nightly predict schedule must wait until it is enabled"
    assert deployment["parameters"]["model"] is None

    # The newest run under the runs root: trained here, after any other test's.
    shared = server.shared / "predict"
    trained = trained_image_folder_run(shared, ("cat", "dog", "ship"))
    runs_root = Path(env["ALEXNET_PIPELINE_RUNS_ROOT"])
    run_dir = runs_root / "photos-run"
    shutil.move(str(trained["run_dir"]), run_dir)
    server.processes.start("predict-worker", [*PREFECT, "worker", "start", "--pool", POOL, "--name", "predict-worker"])

    out = shared / "predictions.csv"
    flow_run_id = server.trigger("predict/predict", {"images": [str(trained["data"] / "test")], "out": str(out)})
    run = server.wait(flow_run_id, timeout=180)
    server.assert_completed(run)
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 15 and (table["error"] == "").all() and set(table["predicted"]) <= {"cat", "dog", "ship"}
    artifacts = server.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    table_artifact = next(a for a in artifacts if a["key"] == "predictions")
    rows = table_artifact["data"] if isinstance(table_artifact["data"], list) else json.loads(table_artifact["data"])
    assert len(rows) == 15 and str(run_dir) in table_artifact["description"]
