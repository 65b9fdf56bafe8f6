"""The examples of the README and of the docs site's pages (docs/*.md) can be
copied as they are: every command line they show uses flags its script
accepts, no command names a run folder that only exists on the page, the
examples that find a run folder or checkpoint for you (the checkpoint-loading
snippet, the evaluate-latest shell line) work on a real run folder, and CI
runs the README's test command."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from alexnet_pipeline.cache import preprocess
from alexnet_pipeline.config import resolve_config
from alexnet_pipeline.download import ensure_cifar10
from alexnet_pipeline.train import train_run

REPO = Path(__file__).resolve().parent.parent
# Every page a reader copies commands from: pages other helpers add to docs/ included.
PAGES = {path.relative_to(REPO).as_posix(): path.read_text()
         for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
LIST_ITEM = re.compile(r"([-*+]|\d+\.)\s")


def code_blocks() -> list[tuple[str, list[tuple[str, int, str]]]]:
    """(language, [(page, line number, text)]) of each fenced block, and each
    indented code block as language "" (one entry per line). As Markdown reads
    them: an indented line is code after a blank line (or more code), and
    inside a list item only when indented past the item's own 4 spaces."""
    blocks = []
    for page, text in PAGES.items():
        fence, current, in_list, blank_before, in_code = None, [], False, True, False
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith("```"):
                if fence is None:
                    fence, current = stripped[3:], []
                else:
                    blocks.append((fence, current))
                    fence = None
                continue
            if fence is not None:
                current.append((page, number, line))
                continue
            if not stripped:
                blank_before = True
                continue
            indent = len(line) - len(line.lstrip())
            if indent == 0:
                in_list = bool(LIST_ITEM.match(stripped))
            in_code = indent >= (8 if in_list else 4) and (blank_before or in_code)
            if in_code:
                blocks.append(("", [(page, number, stripped)]))
            blank_before = False
    return blocks


def shell_commands() -> list[tuple[str, str]]:
    """("page line N", command) for every command in a shell block or an
    indented block, and every inline `python ...` code span: continuation
    lines joined, comments dropped, `a && b` split."""
    commands = []
    for language, lines in code_blocks():
        if language not in ("", "bash", "sh"):
            continue
        pending, start = "", ""
        for page, number, text in lines:
            if not pending:
                start = f"{page} line {number}"
            pending += text.strip() + "\n"
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            for part in re.split(r"\s&&\s", pending.strip()):
                # Only commands: the output shown beside them (`error: ...`) is not one.
                program = re.sub(r"^([A-Z_]+=\S*\s+)*", "", part).split(" ", 1)[0]
                if program in PROGRAMS:
                    commands.append((start, part))
            pending = ""
    for page, text in PAGES.items():
        for match in re.finditer(r"`(python [^`]+)`", text):
            # A span broken over two lines is one command.
            commands.append((f"{page} line {text.count(chr(10), 0, match.start()) + 1}", " ".join(match.group(1).split())))
    return commands


PROGRAMS = {"python", "prefect", "pip", "sudo", "export", "bash", "tar", "ls", "cd", "kill", "rm"}


class _Parsed(Exception):
    pass


def parses(script: Path, argv: list[str], monkeypatch) -> argparse.Namespace:
    """What `script`'s own argument parser makes of argv (stopping there:
    nothing is run). An unknown flag or a bad value fails the test."""
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise _Parsed(original(parser, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        module.main(argv)
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{script} ran without parsing its arguments")


def test_every_command_line_in_the_readme_uses_flags_its_script_accepts(monkeypatch, capsys):
    checked = []
    for line, command in shell_commands():
        words = shlex.split(command, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value command ...
            words.pop(0)
        if len(words) < 2 or words[0] != "python" or not words[1].endswith(".py"):
            continue
        script = REPO / words[1]
        assert script.is_file(), f"{line}: {words[1]} does not exist"
        argv = words[2:]
        # A made-up placeholder (<...>) is no example one can paste.
        assert not re.search(r"<[^>]*>", " ".join(argv)), f"{line}: placeholder in {command!r}"
        try:
            parses(script, argv, monkeypatch)
        except SystemExit as exc:
            if exc.code == 0:  # --help
                checked.append(words[1])
                continue
            pytest.fail(f"{line}: {command!r} is refused by {words[1]} (exit {exc.code}): "
                        f"{capsys.readouterr().err.strip()}")
        checked.append(words[1])
    # The set-up command, the image-folder example, the sweep and the by-hand
    # server commands are among them.
    assert {"flows/full_run.py", "flows/sweep.py", "deployments/single_host.py"} <= set(checked), checked


def test_no_readme_command_names_a_run_folder_that_only_exists_in_the_readme():
    """A command that needs a run folder finds it (a glob, or a command that
    prints it); a literal name like runs/cifar10-imagenet-e30-1a2b3c4d5e is a
    folder the reader does not have."""
    for line, command in shell_commands():
        for path in re.findall(r"runs/[^\s\"')]*", command):
            first = path.split("/")[1]
            assert not first or "*" in first or "$" in first, (
                f"{line}: {command!r} names the run folder {path!r}")
    for language, lines in code_blocks():
        if language == "python":
            for page, line, text in lines:
                assert "..." not in text.split("#")[0], f"{page} line {line}: placeholder path in {text!r}"


@pytest.fixture(scope="module")
def runs_root(module_tmp, cifar_archive_dir) -> Path:
    """A folder holding runs/ with two real run folders of a tiny training,
    the second written last."""
    root = module_tmp("readme")
    data_dir = root / "data"
    data_dir.mkdir()
    shutil.copy(cifar_archive_dir / "cifar-10-python.tar.gz", data_dir)
    overrides = {"model.weights": "none", "train.epochs": 1, "train.batch_size": 5, "train.image_size": 64,
                 "train.device": "cpu", "data.subset": 10, "data.data_dir": str(data_dir)}
    cfg = resolve_config("default", overrides=overrides)
    dataset_dir = preprocess(cfg.data, cfg.train.image_size, ensure_cifar10(data_dir, verify=False, progress=False),
                             progress=False)
    for name in ("older-run", "newer-run"):
        train_run(cfg, dataset_dir, root / "runs" / name, progress=False)
        time.sleep(0.05)  # distinct modification times
    return root


def test_readme_checkpoint_example_loads_the_newest_checkpoint_as_written(runs_root, monkeypatch):
    snippets = ["\n".join(text for _, _, text in lines) for language, lines in code_blocks() if language == "python"]
    example = next(s for s in snippets if "load_checkpoint" in s)
    assert "selected_checkpoint" in example  # the run's selected checkpoint, not merely the newest file
    monkeypatch.chdir(runs_root)
    namespace: dict = {}
    exec(compile(example, "snippet", "exec"), namespace)  # noqa: S102 - our own page
    model, ckpt = namespace["model"], namespace["ckpt"]
    assert isinstance(model, torch.nn.Module) and not model.training
    assert ckpt["epoch"] == 1 and model.classifier[-1].out_features == len(ckpt["class_names"])
    assert "newer-run" in str(next(v for v in namespace.values() if isinstance(v, Path)))


def test_readme_evaluate_latest_line_names_the_newest_run_folder(runs_root):
    line = next(c for _, c in shell_commands() if "evaluate-latest" in c and "$(" in c)
    printer = re.search(r"\$\((ls [^)]*)\)", line).group(1)
    found = subprocess.run(["bash", "-c", printer], cwd=runs_root, capture_output=True, text=True, check=True,
                           env={**os.environ, "PWD": str(runs_root)}).stdout.strip()
    assert Path(found) == runs_root / "runs" / "newer-run", found


def test_ci_runs_the_readme_test_command_as_written():
    """.ci/run is the README's promise kept: the command a contributor is told
    to run is the one CI runs, extras included (the docs build is a test)."""
    readme_test = next(c for _, c in code_blocks_commands("README.md") if "python -m pytest" in c)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert readme_test in ci_lines, f".ci/run does not run the README's test command {readme_test!r}"
    assert '".[test,docs]"' in readme_test, readme_test


def code_blocks_commands(page: str) -> list[tuple[str, str]]:
    """The whole lines of `page`'s indented and shell blocks, as written."""
    return [(f"{p} line {n}", text.strip()) for language, lines in code_blocks() if language in ("", "bash", "sh")
            for p, n, text in lines if p == page]
