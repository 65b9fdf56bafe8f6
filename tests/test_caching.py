"""Cache keys: each stage's key holds its inputs, the task's own source and
the stage's version constant, not the whole library's source. Editing a
comment in report.py must not re-evaluate every checkpoint of every run;
bumping EVALUATE_VERSION must."""

from __future__ import annotations

import re

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

KEY_OF_AN_EVALUATION = """
import sys
from types import SimpleNamespace
from tasks.evaluate import evaluate_checkpoint_task as task
inputs = {"checkpoint": sys.argv[1], "dataset_dir": "data", "device": "cpu", "subset": None, "batch_size": 100}
print(task.cache_policy.compute_key(SimpleNamespace(task=task), inputs, {}))
"""


def evaluation_key(code_root: Path, checkpoint: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    proc = subprocess.run([sys.executable, "-c", KEY_OF_AN_EVALUATION, str(checkpoint)], cwd=code_root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_a_stage_key_follows_its_version_not_the_library_source(tmp_path):
    code = tmp_path / "code"
    for package in ("alexnet_pipeline", "tasks"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    checkpoint = tmp_path / "alexnet-01.pt"
    checkpoint.write_bytes(b"weights")
    before = evaluation_key(code, checkpoint)

    report = code / "alexnet_pipeline" / "report.py"
    report.write_text(report.read_text() + "\n# an edited comment\n")
    assert evaluation_key(code, checkpoint) == before

    versions = code / "alexnet_pipeline" / "versions.py"
    text = versions.read_text()
    version = re.search(r"\nEVALUATE_VERSION = (\d+)\n", text)
    assert version
    versions.write_text(text.replace(version[0], f"\nEVALUATE_VERSION = {int(version[1]) + 1}\n"))
    bumped = evaluation_key(code, checkpoint)
    assert bumped != before

    checkpoint.write_bytes(b"other weights")
    assert evaluation_key(code, checkpoint) not in (before, bumped)
