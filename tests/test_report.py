"""Report stage: the per-epoch table, best epoch, figures and markdown from
the library, and the files the report task writes (through .fn)."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest

from alexnet_pipeline.report import (
    accuracy_figure,
    best_row,
    confusion_figure,
    environment,
    epoch_table,
    report_markdown,
)

matplotlib.use("Agg")

REQUIRED_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds", "checkpoint"]
CLASSES = ["cat", "dog"]


def history_row(epoch: int, train_acc: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": train_acc, "lr": 1e-3 / epoch,
            "epoch_seconds": 2.5, "images_per_s": 40.0, "checkpoint": f"/runs/x/checkpoints/alexnet-{epoch:02d}.pt",
            "checkpoint_sha256": "ab" * 32}


def eval_result(accuracy: float, loss: float, confusion: list[list[int]]) -> dict:
    per_class = [row[i] / sum(row) for i, row in enumerate(confusion)]
    return {"loss": loss, "accuracy": accuracy, "per_class_accuracy": per_class, "confusion": confusion,
            "num_images": sum(map(sum, confusion))}


# Epoch 2 is best (75%), epoch 3 ties it, the last epoch (4) is worse.
HISTORY = [history_row(1, 0.4), history_row(2, 0.6), history_row(3, 0.7), history_row(4, 0.8)]
EVALUATIONS = [
    eval_result(0.5, 0.9, [[1, 1], [1, 1]]),
    eval_result(0.75, 0.6, [[2, 0], [1, 1]]),
    eval_result(0.75, 0.5, [[1, 1], [0, 2]]),
    eval_result(0.25, 1.2, [[1, 1], [2, 0]]),
]
MEASUREMENTS = {"stage_seconds": {"download": 0.1, "preprocess": 0.2, "train": 12.0, "evaluate": 1.0},
                "peak_host_memory_gb": 1.5, "peak_gpu_memory_gb": None}
CONFIG = {"data": {"dataset": "cifar10"}, "model": {"weights": "none"}, "train": {"seed": 17, "epochs": 4}}


def test_epoch_table_has_one_row_per_epoch():
    df = epoch_table(list(reversed(HISTORY)), list(reversed(EVALUATIONS)))
    assert [c for c in REQUIRED_COLUMNS if c not in df.columns] == []
    assert df["epoch"].tolist() == [1, 2, 3, 4]  # sorted, whatever the input order
    assert df["test_acc"].tolist() == [0.5, 0.75, 0.75, 0.25]
    assert df["test_loss"].tolist() == [0.9, 0.6, 0.5, 1.2]
    assert df["train_acc"].tolist() == [0.4, 0.6, 0.7, 0.8]
    with pytest.raises(ValueError):
        epoch_table(HISTORY, EVALUATIONS[:3])  # a missing evaluation is a bug, not a short table


def test_best_epoch_is_the_earliest_highest_test_accuracy():
    best = best_row(epoch_table(HISTORY, EVALUATIONS))
    assert int(best["epoch"]) == 2 and best["test_acc"] == 0.75


def test_accuracy_figure_marks_the_best_epoch():
    fig = accuracy_figure(epoch_table(HISTORY, EVALUATIONS))
    acc_ax, loss_ax = fig.axes
    for ax in (acc_ax, loss_ax):
        vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
        assert [line.get_xdata()[0] for line in vertical] == [2]
    assert [list(line.get_ydata()) for line in acc_ax.get_lines()[:2]] == [[40, 60, 70, 80], [50, 75, 75, 25]]
    assert any("best 75.00% (epoch 2)" in text.get_text() for text in acc_ax.texts)


def test_confusion_figure_shows_the_counts():
    fig = confusion_figure([[3, 1], [0, 4]], CLASSES, "Confusion matrix, epoch 2")
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix, epoch 2"
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES


def test_report_markdown_names_best_and_final_epoch():
    df = epoch_table(HISTORY, EVALUATIONS)
    env = environment("cpu")
    text = report_markdown(df, EVALUATIONS[1], CLASSES, CONFIG, env, MEASUREMENTS, skipped_files=["/x/bad.png (broken)"])
    assert "best test accuracy: **75.00%** at epoch 2" in text
    assert "final test accuracy: 25.00% at epoch 4" in text
    assert "seed: 17" in text and f"torch {env['torch']}" in text and "device: cpu" in text
    assert "| cat | 100 |" in text and "| dog | 50 |" in text  # per-class accuracy of the best checkpoint
    assert "| train | 12 |" in text
    assert "/x/bad.png" in text
    config_json = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(config_json) == CONFIG


def test_write_report_task_writes_the_files_and_artifacts(prefect_storage, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import write_report

    run_dir = tmp_path / "run"

    @flow
    def report_only():
        # The task's own logic (.fn), inside a flow run so artifacts attach to it.
        return write_report.fn(run_dir=str(run_dir), history=HISTORY, evaluations=EVALUATIONS, class_names=CLASSES,
                               config=CONFIG, env=environment("cpu"), measurements=MEASUREMENTS, skipped_files=[])

    state = report_only(return_state=True)
    assert state.is_completed()
    paths = state.result()
    assert sorted(paths) == ["accuracy.csv", "accuracy.png", "confusion.png", "report.md"]
    assert all(paths[name] == str(run_dir / name) for name in paths)
    csv = pd.read_csv(run_dir / "accuracy.csv")
    assert list(csv.columns[: len(REQUIRED_COLUMNS) - 1]) == REQUIRED_COLUMNS[:-1] and "checkpoint" in csv.columns
    assert csv["epoch"].tolist() == [1, 2, 3, 4]
    assert csv["test_acc"].tolist() == [0.5, 0.75, 0.75, 0.25]
    assert csv["checkpoint"].iloc[1].endswith("alexnet-02.pt")
    for png in ("accuracy.png", "confusion.png"):
        data = (run_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    report = (run_dir / "report.md").read_text()
    assert "at epoch 2" in report and "![accuracy](accuracy.png)" in report and "![confusion matrix](confusion.png)" in report
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(paths)  # no temporary files left

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    assert {"accuracy-per-epoch", "accuracy-report"} <= set(by_key)
    table = by_key["accuracy-per-epoch"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["test_acc"] for row in table] == [0.5, 0.75, 0.75, 0.25]
    assert by_key["accuracy-report"].data == report
