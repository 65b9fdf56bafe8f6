"""The throughput benchmark runs end to end on the CPU and reports (never a
timing assertion: numbers on a shared 2-core machine mean nothing)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_throughput_quick_reports_all_fields():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["device"] == "cpu"
    for key in ("seed_img_per_s", "pipeline_img_per_s", "streamed_img_per_s", "eval_img_per_s", "checkpoint_eval_seconds"):
        assert result[key] > 0, key
    # speedup is computed from the unrounded rates, the rates are printed rounded to 0.1
    # img/s: at CPU rates of ~20 img/s that rounding alone moves the ratio by ~0.5%.
    assert result["speedup"] == pytest.approx(result["pipeline_img_per_s"] / result["seed_img_per_s"], rel=0.01, abs=0.006)
    assert result["peak_gpu_mem_gb"] is None
    # The table precedes the JSON line and names both recipes.
    table = "\n".join(lines[:-1])
    assert "seed recipe (tutorial)" in table and "pipeline, train" in table
