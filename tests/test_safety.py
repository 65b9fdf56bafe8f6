"""Safety rules of issue 4 that hold for the whole code base, checked on its
source, plus files written with the user's umask.

    pytest tests/test_safety.py
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from alexnet_pipeline.cache import preprocess
from alexnet_pipeline.checkpoint import save_epoch_checkpoint
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.files import atomic_write_text
from alexnet_pipeline.lock import LOCK_NAME, run_folder_lock
from alexnet_pipeline.ownership import RUN_MARKER
from tests.conftest import REPO

SOURCE_DIRS = ("alexnet_pipeline", "tasks", "flows", "benchmarks", "deployments", "tests")


def python_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]
    assert len(files) > 20
    return files


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_uses_weights_only():
    offenders = []
    for path in python_files():
        for call in calls(ast.parse(path.read_text(), str(path))):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", None) == "torch":
                value = keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == [], "torch.load without weights_only=True"


def test_archives_are_extracted_only_through_a_filter():
    offenders = []
    for path in python_files():
        for call in calls(ast.parse(path.read_text(), str(path))):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in ("extractall", "extract", "unpack_archive"):
                value = keyword(call, "filter")
                if value is None or (isinstance(value, ast.Constant) and value.value in ("fully_trusted", None)):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == [], "archive extraction without a safe filter"


# Ways to switch off certificate checks in Python and in tools scripts call.
TLS_OFF = re.compile(r"_create_unverified_context|CERT_NONE|check_hostname\s*=\s*False|verify\s*=\s*False"
                     r"|--no-check-certificate|curl\s+(-\w*k|--insecure)|PYTHONHTTPSVERIFY")


def test_tls_certificate_checks_are_never_switched_off():
    scripts = [p for d in SOURCE_DIRS if d != "tests" for p in (REPO / d).rglob("*") if p.is_file()
               and p.suffix in (".py", ".sh", ".yaml", ".yml", ".toml")]
    scripts += [p for p in (REPO / ".ci").rglob("*") if p.is_file()]
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in scripts for m in TLS_OFF.finditer(p.read_text())]
    assert offenders == []


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
HOST_SETTING = re.compile(r"(?:server\W+start.*?--host|PREFECT_SERVER_API_HOST)[\s=:,'\"]+([^\s'\",)\]]+)")


def test_prefect_servers_started_by_scripts_bind_to_localhost():
    """`prefect server start` binds 127.0.0.1 unless told otherwise; no script
    may tell it otherwise."""
    files = [p for d in (*SOURCE_DIRS, ".ci") if (REPO / d).exists() for p in (REPO / d).rglob("*")
             if p.is_file() and p.suffix in ("", ".py", ".sh", ".yaml", ".yml", ".toml")
             and p != Path(__file__).resolve()]  # this file's own examples below
    offenders = []
    for path in files:
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in HOST_SETTING.finditer(line):
                if match.group(1) not in LOCAL_HOSTS:
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_the_host_check_recognises_a_public_bind():
    assert HOST_SETTING.search('prefect server start --host 0.0.0.0 --port 4200').group(1) == "0.0.0.0"
    assert HOST_SETTING.search('[*PREFECT, "server", "start", "--host", "127.0.0.1"]').group(1) == "127.0.0.1"
    assert HOST_SETTING.search("PREFECT_SERVER_API_HOST=0.0.0.0").group(1) == "0.0.0.0"


# --- files follow the user's umask -------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_follow_the_umask(umask_027, tmp_path, image_folder):
    from alexnet_pipeline.model import new_alexnet

    checkpoint = tmp_path / "run" / "checkpoints" / "alexnet-01.pt"
    with run_folder_lock(tmp_path / "run"):
        lock_mode = mode(tmp_path / "run" / LOCK_NAME)
        save_epoch_checkpoint(checkpoint, new_alexnet(3).state_dict(), {"epoch": 1})
        atomic_write_text(tmp_path / "run" / "accuracy.csv", "epoch\n")
    # Its own cache folder: the session's shared one may hold this entry, built under another umask.
    dataset_dir = preprocess(DataConfig(dataset="imagefolder", data_dir=str(image_folder),
                                        cache_dir=str(tmp_path / "cache")), 64, progress=False)

    # Not 0600 (mkstemp's default) and not 0644 (ignoring the umask).
    assert mode(checkpoint) == mode(tmp_path / "run" / "accuracy.csv") == lock_mode == 0o640
    assert mode(tmp_path / "run" / RUN_MARKER) == 0o640
    assert mode(checkpoint.parent) == 0o750
    assert mode(dataset_dir) == 0o750
    assert {mode(p) for p in dataset_dir.iterdir()} == {0o640}
