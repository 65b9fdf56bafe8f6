"""The accuracy report as a user sees it in Prefect's UI: a real Prefect
server (with its UI, which the test harness does not serve), the real report
task run against it, the artifact page opened in headless Chromium.

Needs Debian's `chromium` and the `playwright` package (no browser download:
it drives /usr/bin/chromium); `.ci/run` installs both. Without them the test
is skipped, or fails when CI is set. The page's screenshot is saved as
test-artifacts/report-artifact.png either way the assertions go.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from alexnet_pipeline.record import row_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

SCREENSHOT = REPO / "test-artifacts" / "report-artifact.png"
CHROMIUM = os.environ.get("ALEXNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags that keep Chromium from calling out (this machine refuses) and from
# needing a sandbox or a GPU (a container without either).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Generous: every wait below ends as soon as its condition holds, so a slow,
# shared machine only makes the test slower, never wrong.
SERVER_START_S = 240
PAGE_S = 120

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Three epochs near chance, like the smoke preset: best 15.4% at epoch 2, final 15.0%.
CORRECT_PER_CLASS = {1: [12] * 10, 2: [19, 17, 12, 10, 16, 15, 14, 17, 20, 14], 3: [15] * 10}
BEST = "15.4%"


def _confusion(correct: list[int], per_class: int = 100) -> list[list[int]]:
    rows = []
    for i, right in enumerate(correct):
        wrong, spare = divmod(per_class - right, len(correct) - 1)
        others = [wrong + (k < spare) for k in range(len(correct) - 1)]
        rows.append(others[:i] + [right] + others[i:])
    return rows


def synthetic_report_inputs(run_dir: Path) -> dict:
    history, evaluations = [], []
    for epoch, correct in CORRECT_PER_CLASS.items():
        confusion = _confusion(correct)
        accuracy = sum(correct) / 1000
        history.append({"epoch": epoch, "train_loss": 2.25 - 0.05 * epoch, "train_acc": accuracy - 0.01, "lr": 3e-4,
                        "epoch_seconds": 15.0, "images_per_s": 66.7,
                        "checkpoint": str(run_dir / "checkpoints" / f"alexnet-{epoch:02d}.pt")})
        evaluations.append({"loss": 2.2 - 0.03 * epoch, "accuracy": accuracy, "num_images": 1000,
                            "per_class_accuracy": [c / 100 for c in correct], "confusion": confusion})
    rows = [row_of(h, {"test": e}) for h, e in zip(history, evaluations, strict=True)]
    best_result = evaluations[1]  # epoch 2, the best on the test set (no validation split here)
    return {"run_dir": str(run_dir), "rows": rows, "best_result": best_result, "class_names": CIFAR,
            "config": {"data": {"dataset": "cifar10", "subset": 1000}, "train": {"seed": 0, "epochs": 3}},
            "env": {"device": "cpu", "torch": "test", "python": "3.11", "host": "test"},
            "measurements": {"stage_seconds": {"train": 45.0, "evaluate": 4.0}, "peak_host_memory_gb": 1.5,
                             "peak_gpu_memory_gb": None},
            "skipped_files": []}


# The pipeline's own path: the real write-report task inside a flow run,
# against the server named by PREFECT_API_URL.
REPORT_FLOW = """
import json, sys
from prefect import flow
from tasks.report import write_report

@flow(name="report-ui-check")
def report_only(inputs):
    return write_report(**inputs)

report_only(json.loads(open(sys.argv[1]).read()))
"""


def _need(available: bool, why: str) -> None:
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why}; .ci/run installs it")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path) -> dict[str, str]:
    """No Prefect setting of the test process (its harness, a profile) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}


def _api(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def prefect_server_with_ui(tmp_path_factory):
    """`prefect server start` on a free loopback port, UI included, with its
    own home and database; stopped (its whole process group) afterwards."""
    home = tmp_path_factory.mktemp("prefect-ui-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "server.log").open("w")
    # The UI asks the API at PREFECT_UI_API_URL, which does not follow --port
    # (it would be 127.0.0.1:4200).
    env = {**_clean_env(home), "PREFECT_UI_API_URL": f"{url}/api"}
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                _api(f"{url}/api/health")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"prefect server did not come up (exit {proc.poll()}):\n"
                                + (home / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_report_artifact_page_shows_plots_tables_and_best_accuracy(prefect_server_with_ui, tmp_path):
    _need(Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install -e '.[test]')")

    url = prefect_server_with_ui
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(synthetic_report_inputs(tmp_path / "run")))
    client_home = tmp_path / "client-home"
    client_home.mkdir()
    proc = subprocess.run([sys.executable, "-c", REPORT_FLOW, str(inputs)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**_clean_env(client_home), "PREFECT_API_URL": f"{url}/api"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    artifacts = _api(f"{url}/api/artifacts/filter", {"artifacts": {"key": {"any_": ["accuracy-report"]}}})
    assert len(artifacts) == 1
    page_url = f"{url}/artifacts/artifact/{artifacts[0]['id']}"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 3000})
            page.goto(page_url, wait_until="networkidle", timeout=PAGE_S * 1000)
            # The UI fetches the artifact and renders its markdown after load;
            # then the images decode. A wait that times out is not an error
            # here: the screenshot is taken and the assertions say what is missing.
            for condition in ("() => document.body.innerText.includes('Per-class accuracy')",
                              "() => document.images.length >= 2 && "
                              "Array.from(document.images).every(img => img.complete)"):
                try:
                    page.wait_for_function(condition, timeout=PAGE_S * 1000)
                except Exception:  # noqa: BLE001 - playwright's TimeoutError
                    pass
            images = page.evaluate("() => Array.from(document.images).map(img => ({src: img.src.slice(0, 60), "
                                   "alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth}))")
            text = page.evaluate("() => document.body.innerText")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    report_images = [img for img in images if img["alt"].startswith(("Accuracy", "Confusion", "accuracy", "confusion"))]
    assert len(report_images) == 2, images
    assert all(img["naturalWidth"] > 0 for img in images), f"broken image(s) on {page_url}: {images}"
    assert BEST in text and "Verdict" in text and "near chance" in text
    assert "Accuracy per epoch" in text and "2 (selected)" in text  # the per-epoch table
    assert "Per-class test accuracy" in text and all(name in text for name in CIFAR)


# Class names a user's image folder may hold (issue 24): markup of every kind,
# to be shown as typed, never rendered.
HOSTILE = ["a|b", '<img src=x onerror="window.__xss=1">', "[x](javascript:window.__xss=2)", r"$\frac{a}{b}$",
           "``code``", "*em* _em_", "www.example.com", "<script>window.__xss=3</script>", "two\nlines", "cat"]


def test_hostile_class_names_are_text_on_the_artifact_page(prefect_server_with_ui, tmp_path):
    _need(Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install -e '.[test]')")
    from alexnet_pipeline.escape import visible_text

    url = prefect_server_with_ui
    run_dir = tmp_path / "run <b>bold</b> [l](javascript:window.__xss=4)"
    inputs = {**synthetic_report_inputs(run_dir), "class_names": HOSTILE}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    client_home = tmp_path / "client-home"
    client_home.mkdir()
    proc = subprocess.run([sys.executable, "-c", REPORT_FLOW, str(tmp_path / "inputs.json")], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**_clean_env(client_home), "PREFECT_API_URL": f"{url}/api"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    artifacts = _api(f"{url}/api/artifacts/filter", {"artifacts": {"key": {"any_": ["accuracy-report"]}}})
    (artifact,) = [a for a in artifacts if str(run_dir.name) in (a.get("description") or "")]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 3000})
            dialogs = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"{url}/artifacts/artifact/{artifact['id']}", wait_until="networkidle", timeout=PAGE_S * 1000)
            try:
                page.wait_for_function("() => document.body.innerText.includes('Per-class accuracy')",
                                       timeout=PAGE_S * 1000)
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: the assertions say what is missing
                pass
            seen = page.evaluate("""() => ({
                xss: window.__xss,
                text: document.body.innerText,
                foreignImages: Array.from(document.images).filter(img => !img.src.startsWith('data:')).length,
                scriptLinks: Array.from(document.querySelectorAll('a')).filter(a => a.href.startsWith('javascript')).length,
                bold: Array.from(document.querySelectorAll('b')).length,
                rows: Array.from(document.querySelectorAll('table')).map(t =>
                    Array.from(t.querySelectorAll('tbody tr')).map(r =>
                        Array.from(r.querySelectorAll('td')).map(c => c.innerText))),
            })""")
        finally:
            browser.close()
    assert seen["xss"] is None and dialogs == []
    assert seen["foreignImages"] == 0 and seen["scriptLinks"] == 0 and seen["bold"] == 0
    (per_class,) = [rows for rows in seen["rows"] if rows and rows[0][0] == visible_text(HOSTILE[0])]
    assert [row[0] for row in per_class] == [visible_text(name) for name in HOSTILE]
    assert all(len(row) == 3 for row in per_class)
