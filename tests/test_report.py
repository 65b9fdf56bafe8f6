"""Report stage: the per-epoch table, best epoch, figures and markdown from
the library, and the files the report task writes (through .fn)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from alexnet_pipeline.record import row_of
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
VALIDATION = [  # chooses epoch 3, where the test set would choose epoch 2
    eval_result(0.5, 0.8, [[1, 1], [1, 1]]),
    eval_result(0.5, 0.7, [[1, 1], [1, 1]]),
    eval_result(0.75, 0.6, [[2, 0], [1, 1]]),
    eval_result(0.25, 0.9, [[1, 1], [2, 0]]),
]


def rows(history: list[dict] = HISTORY, evaluations: list[dict] = EVALUATIONS,
         validation: list[dict] | None = None) -> list[dict]:
    """Run-record rows (record.row_of), as training and evaluation write them."""
    validation = validation or [None] * len(history)
    return [row_of(h, {"test": e, **({"val": v} if v else {})})
            for h, e, v in zip(history, evaluations, validation, strict=True)]


MEASUREMENTS = {"stage_seconds": {"download": 0.1, "preprocess": 0.2, "train": 12.0, "evaluate": 1.0},
                "peak_host_memory_gb": 1.5, "peak_gpu_memory_gb": None}
CONFIG = {"data": {"dataset": "cifar10"}, "model": {"weights": "none"}, "train": {"seed": 17, "epochs": 4}}


def test_epoch_table_has_one_row_per_epoch():
    df = epoch_table(list(reversed(rows())))
    assert [c for c in REQUIRED_COLUMNS if c not in df.columns] == []
    assert df["epoch"].tolist() == [1, 2, 3, 4]  # sorted, whatever the input order
    assert df["test_acc"].tolist() == [0.5, 0.75, 0.75, 0.25]
    assert df["test_loss"].tolist() == [0.9, 0.6, 0.5, 1.2]
    assert df["train_acc"].tolist() == [0.4, 0.6, 0.7, 0.8]
    # Relative to the run folder: a moved run folder names the same files.
    assert df["checkpoint"].tolist() == [f"checkpoints/alexnet-{e:02d}.pt" for e in (1, 2, 3, 4)]
    assert df["val_acc"].isna().all()
    with pytest.raises(ValueError):
        rows(HISTORY, EVALUATIONS[:3])  # a missing evaluation is a bug, not a short table


def test_best_epoch_is_the_earliest_highest_test_accuracy_without_a_split():
    best = best_row(epoch_table(rows()))
    assert int(best["epoch"]) == 2 and best["test_acc"] == 0.75


def test_best_epoch_is_chosen_on_validation_when_there_is_a_split():
    df = epoch_table(rows(validation=VALIDATION))
    best = best_row(df)
    assert int(best["epoch"]) == 3 and best["val_acc"] == 0.75 and best["test_acc"] == 0.75
    text = report_markdown(df, EVALUATIONS[2], CLASSES, CONFIG, environment("cpu"), MEASUREMENTS, skipped_files=[])
    assert "- selected epoch: 3, the highest validation accuracy (75.0% on 4 images held out" in text
    assert "- test accuracy of the selected epoch: **75.0%** ± 42.4 points (95% interval)" in text
    assert "optimistic" not in text  # (4 test images: near chance, so the verdict says that first)
    assert "| 3 (selected) |" in text and "Validation accuracy (%)" in text
    acc_ax = accuracy_figure(df, num_classes=2).axes[0]
    assert [50, 50, 75, 25] in [list(line.get_ydata()) for line in acc_ax.get_lines()]  # the validation curve
    assert "selected on validation: epoch 3, test 75.0%" in _legend_texts(acc_ax)


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_accuracy_figure_marks_the_best_epoch():
    fig = accuracy_figure(epoch_table(rows()), num_classes=2)
    acc_ax, loss_ax = fig.axes
    for ax in (acc_ax, loss_ax):
        vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [2, 2]]
        assert len(vertical) == 1  # the best epoch's dotted line
    assert [list(line.get_ydata()) for line in acc_ax.get_lines()[:2]] == [[40, 60, 70, 80], [50, 75, 75, 25]]
    assert "selected on test: epoch 2, test 75.0%" in _legend_texts(acc_ax)


def test_accuracy_figure_is_honest_about_scale_and_chance():
    """0-100% (no autoscaled 10.8-18% that makes noise look like progress),
    chance drawn, loss from 0 with a uniform guess's ln(C) drawn."""
    import math

    df = epoch_table(rows())
    acc_ax, loss_ax = accuracy_figure(df, num_classes=2).axes
    assert acc_ax.get_ylim() == (0, 100)
    chance = [line for line in acc_ax.get_lines() if list(line.get_ydata()) == [50, 50]]
    assert len(chance) == 1 and "chance (50%)" in _legend_texts(acc_ax)
    assert loss_ax.get_ylim()[0] == 0
    uniform = [line for line in loss_ax.get_lines() if list(line.get_ydata()) == [math.log(2)] * 2]
    assert len(uniform) == 1 and "uniform guess (ln 2 = 0.69)" in _legend_texts(loss_ax)


def test_one_epoch_run_has_one_whole_epoch_tick():
    df = epoch_table(rows(HISTORY[:1], EVALUATIONS[:1]))
    for ax in accuracy_figure(df, num_classes=10).axes:
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1]


def test_many_epochs_get_whole_epoch_ticks():
    history = [history_row(e, 0.5) for e in range(1, 31)]
    df = epoch_table(rows(history, [EVALUATIONS[0]] * 30))
    ax = accuracy_figure(df, num_classes=10).axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 4 and all(float(t).is_integer() for t in ticks)


def test_confusion_figure_shows_counts_and_row_shares():
    fig = confusion_figure([[3, 1], [0, 4]], CLASSES, "Confusion matrix, epoch 2")
    ax, colorbar_ax = fig.axes
    assert ax.get_title() == "Confusion matrix, epoch 2"
    assert sorted(t.get_text() for t in ax.texts) == ["0\n0%", "1\n25%", "3\n75%", "4\n100%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert colorbar_ax.get_ylabel() == "test images (count)"
    fig.canvas.draw()
    low, high = colorbar_ax.get_ylim()
    ticks = [t for t in colorbar_ax.get_yticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_sweep_figure_keeps_equal_trials_apart():
    """Two trials with the same results stay visible: different markers and
    line styles, points shifted sideways by a small stated amount; the same
    0-100% axis and chance line as the run's own figure."""
    from alexnet_pipeline.sweep import MAX_TRIAL_OFFSET, sweep_figure

    curve = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.3, 0.4]})
    ax = sweep_figure({"1: lr=0.1": curve, "2: lr=0.2": curve.copy()}, num_classes=10).axes[0]
    first, second = ax.get_lines()[:2]
    assert list(first.get_ydata()) == list(second.get_ydata()) == [30, 40]
    assert list(first.get_xdata()) != list(second.get_xdata())
    assert all(abs(x - e) <= MAX_TRIAL_OFFSET + 1e-9 for line in (first, second) for x, e in zip(line.get_xdata(), [1, 2]))
    assert (first.get_marker(), first.get_linestyle()) != (second.get_marker(), second.get_linestyle())
    assert ax.get_ylim() == (0, 100) and "chance (10%)" in _legend_texts(ax)
    assert f"{MAX_TRIAL_OFFSET:g} epoch" in ax.get_title()
    ax.figure.canvas.draw()
    assert [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] == [1, 2]


def test_report_markdown_names_best_and_final_epoch():
    df = epoch_table(rows())
    env = environment("cpu")
    text = report_markdown(df, EVALUATIONS[1], CLASSES, CONFIG, env, MEASUREMENTS, skipped_files=["/x/bad.png (broken)"])
    assert "- selected epoch: 2, the highest test accuracy (no validation split: chosen on the test set" in text
    assert "- test accuracy of the selected epoch: **75.0%** ± 42.4 points (95% interval)" in text
    assert "final test accuracy: 25.0% at epoch 4" in text
    assert "seed: 17" in text and f"torch {env['torch']}" in text and "device: cpu" in text
    assert "| cat | 100.0 | 2 |" in text and "| dog | 50.0 | 2 |" in text  # per-class accuracy of the best checkpoint
    assert "| train | 12.0 |" in text
    assert "/x/bad.png" in text
    assert "![Accuracy and loss per epoch](accuracy.png)" in text and "](confusion.png)" in text
    config_json = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(config_json) == CONFIG


def test_report_markdown_tables_are_readable_and_consistent():
    """Readable headers, no snake_case; accuracies with one decimal and
    losses with three everywhere (not 15 beside 15.4, 2.29 beside 2.205)."""
    import re

    df = epoch_table(rows())
    text = report_markdown(df, EVALUATIONS[1], CLASSES, CONFIG, environment("cpu"), MEASUREMENTS, skipped_files=[])
    tables = text.split("## Configuration", 1)[0]
    headers = [line for line in tables.splitlines() if line.startswith("| ") and "---" not in line
               and line.split("|")[1].strip() in ("Epoch", "Class", "Stage")]
    assert headers[0] == ("| Epoch | Train loss | Train accuracy (%) | Test loss | Test accuracy (%) | "
                          "Learning rate | Epoch time (s) | Images/s |")
    assert headers[1] == "| Class | Accuracy (%) | Test images |"  # no validation columns without a split
    assert headers[2] == "| Stage | Seconds |"
    assert not re.search(r"\b[a-z]+_[a-z]+\b", "\n".join(headers))
    assert "| 1 | 1.000 | 40.0 | 0.900 | 50.0 |" in tables
    assert "| 2 (selected) | 0.500 | 60.0 | 0.600 | 75.0 |" in tables
    assert "| 4 | 0.250 | 80.0 | 1.200 | 25.0 |" in tables
    percents = re.findall(r"(\d+(?:\.\d+)?)%(?! interval)", tables)  # accuracies, not the interval's level
    assert percents and all(re.fullmatch(r"\d+\.\d", p) for p in percents), percents


def test_report_verdict_says_when_a_result_is_near_chance():
    from alexnet_pipeline.report import verdict

    # The smoke run: 15.4% on 1000 CIFAR-10 test images.
    smoke = verdict(best_acc=0.154, final_acc=0.15, num_classes=10, num_images=1000)
    assert smoke.startswith("near chance: a demonstration that the pipeline runs, not a result")
    assert "15.4%" in smoke and "10.0% chance" in smoke
    trained = verdict(best_acc=0.874, final_acc=0.871, num_classes=10, num_images=10_000)
    assert trained.startswith("above chance") and "87.1% ± 0.7 points" in trained and "optimistic" in trained
    # Selected on a validation split: the selected epoch's test accuracy is the number to quote.
    on_val = verdict(best_acc=0.874, final_acc=0.871, num_classes=10, num_images=10_000, on="validation",
                     val_acc=0.88, val_images=5000)
    assert "Quote the selected epoch's test accuracy, 87.4% ± 0.7 points" in on_val
    assert "88.0% on 5,000 held-out training images" in on_val and "optimistic" not in on_val
    # Ten test images cannot show that 80% on two classes beats a coin.
    assert verdict(0.8, 0.8, num_classes=2, num_images=10).startswith("near chance")

    df = epoch_table(rows())
    text = report_markdown(df, EVALUATIONS[1], CLASSES, CONFIG, environment("cpu"), MEASUREMENTS, skipped_files=[])
    verdict_lines = [line for line in text.splitlines() if line.startswith("**Verdict:**")]
    assert verdict_lines == [f"**Verdict:** {verdict(0.75, 0.25, num_classes=2, num_images=4)}"]
    assert text.index("**Verdict:**") < text.index("test accuracy of the selected epoch")


def test_write_report_task_writes_the_files_and_artifacts(prefect_storage, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import write_report

    run_dir = tmp_path / "run"

    @flow
    def report_only():
        # The task's own logic (.fn), inside a flow run so artifacts attach to it.
        return write_report.fn(run_dir=str(run_dir), rows=rows(), best_result=EVALUATIONS[1], class_names=CLASSES,
                               config=CONFIG, env=environment("cpu"), measurements=MEASUREMENTS, skipped_files=[])

    state = report_only(return_state=True)
    assert state.is_completed()
    paths = state.result()
    assert sorted(paths) == ["accuracy.csv", "accuracy.png", "confusion.png", "report.md"]
    assert all(paths[name] == str(run_dir / name) for name in paths)
    csv = pd.read_csv(run_dir / "accuracy.csv")
    assert [c for c in csv.columns if c in REQUIRED_COLUMNS] == REQUIRED_COLUMNS  # in this order, among others
    assert csv["epoch"].tolist() == [1, 2, 3, 4]
    assert csv["test_acc"].tolist() == [0.5, 0.75, 0.75, 0.25]
    assert csv["checkpoint"].iloc[1].endswith("alexnet-02.pt")
    for png in ("accuracy.png", "confusion.png"):
        data = (run_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    report = (run_dir / "report.md").read_text()
    # On disk, report.md links the PNGs beside it.
    assert "selected epoch: 2" in report and "](accuracy.png)" in report and "](confusion.png)" in report
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(paths)  # no temporary files left

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    assert {"accuracy-per-epoch", "accuracy-report"} <= set(by_key)
    table = by_key["accuracy-per-epoch"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["test_acc"] for row in table] == [0.5, 0.75, 0.75, 0.25]


def test_report_artifact_carries_its_images_inline(prefect_storage, tmp_path):
    """Prefect's UI cannot serve the run folder's files: the markdown artifact
    embeds the same PNGs as data: URIs (a relative link is a broken image
    there), and is otherwise report.md."""
    import base64
    import re

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import write_report

    run_dir = tmp_path / "run"

    @flow
    def report_only():
        write_report.fn(run_dir=str(run_dir), rows=rows(), best_result=EVALUATIONS[1], class_names=CLASSES,
                        config=CONFIG, env=environment("cpu"), measurements=MEASUREMENTS, skipped_files=[])

    state = report_only(return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (markdown,) = [a.data for a in artifacts if a.key == "accuracy-report"]
    links = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", markdown)
    assert len(links) == 2 and all(link.startswith("data:image/png;base64,") for link in links)
    embedded = [base64.b64decode(link.split(",", 1)[1]) for link in links]
    assert embedded == [(run_dir / "accuracy.png").read_bytes(), (run_dir / "confusion.png").read_bytes()]
    on_disk = (run_dir / "report.md").read_text()
    assert markdown.replace(links[0], "accuracy.png").replace(links[1], "confusion.png") == on_disk
    # Kept modest: the artifact is stored in Prefect's database and loaded by the UI.
    assert len(markdown.encode()) < 500_000


def test_sweep_row_keeps_the_trials_real_training_time():
    """A re-run of a finished sweep is a cache hit of a few seconds per trial:
    the row's training time comes from the run folder's recorded epochs."""
    import pandas as pd

    from alexnet_pipeline.sweep import RESULT_COLUMNS, run_summary

    curve = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.3, 0.5], "epoch_seconds": [41.25, 40.5]})
    summary = run_summary(curve)
    assert summary["train_seconds"] == 81.8 and summary["best_epoch"] == 2
    assert "train_seconds" in RESULT_COLUMNS


def test_sweep_trials_are_selected_and_ranked_on_validation():
    """Each trial's epoch is selected on its validation accuracy, and the
    trials are ranked by it: the test set chooses neither."""
    import pandas as pd

    from alexnet_pipeline.sweep import run_summary, sweep_table

    curves = [pd.DataFrame({"epoch": [1, 2], "val_acc": [0.6, 0.4], "test_acc": [0.3, 0.9], "epoch_seconds": [1, 1]}),
              pd.DataFrame({"epoch": [1, 2], "val_acc": [0.5, 0.7], "test_acc": [0.8, 0.2], "epoch_seconds": [1, 1]})]
    first, second = (run_summary(c) for c in curves)
    assert (first["best_epoch"], first["best_test_acc"], first["selected_on"]) == (1, 0.3, "validation")
    assert (second["best_epoch"], second["best_val_acc"]) == (2, 0.7)
    table = sweep_table([{"trial": 1, "state": "Completed", "params": {"seed": 0}, **first},
                         {"trial": 2, "state": "Completed", "params": {"seed": 1}, **second}], ["seed"])
    assert table["rank"].tolist() == [2, 1]  # trial 2 is better on validation, though worse on test


def test_trials_that_differ_only_by_seed_are_summarised_over_seeds():
    """lr=1e-3 with seeds 0, 1, 2 and lr=1e-2 with seed 0: the first group's
    mean, spread (n-1) and range over seeds; the figure draws the mean and a
    min-max band, on the same 0-100% axis."""
    import pandas as pd

    from alexnet_pipeline.sweep import seed_band_figure, seed_groups, seed_summary

    def row(lr, seed, best, final):
        return {"state": "Completed", "params": {"lr": lr, "seed": seed}, "best_test_acc": best,
                "final_test_acc": final}

    rows = [row(1e-3, 0, 0.50, 0.48), row(1e-3, 1, 0.54, 0.52), row(1e-3, 2, 0.52, 0.50), row(1e-2, 0, 0.30, 0.30),
            {"state": "Failed", "params": {"lr": 1e-3, "seed": 3}}]
    groups = seed_groups(rows, ["lr", "seed"])
    assert {k: len(v) for k, v in groups.items()} == {"lr=0.001": 3, "lr=0.01": 1}
    summary = seed_summary(groups).set_index("group")
    first = summary.loc["lr=0.001"]
    assert first["seeds"] == "0 1 2" and first["n"] == 3
    assert first["best_test_acc_mean"] == pytest.approx(0.52)
    assert first["best_test_acc_sd"] == pytest.approx(0.02)
    assert (first["best_test_acc_min"], first["best_test_acc_max"]) == (0.50, 0.54)
    assert first["final_test_acc_mean"] == pytest.approx(0.50)
    assert seed_groups([row(1e-3, 0, 0.5, 0.5), row(1e-2, 0, 0.3, 0.3)], ["lr", "seed"]) == {}  # nothing to group

    curves = {"lr=0.001": [pd.DataFrame({"epoch": [1, 2], "test_acc": [0.4 + d, 0.5 + d]}) for d in (0, 0.02, 0.04)]}
    fig = seed_band_figure(curves, num_classes=10)
    ax = fig.axes[0]
    mean_line = ax.get_lines()[0]
    assert list(mean_line.get_ydata()) == pytest.approx([42.0, 52.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(40.0) and band.max() == pytest.approx(54.0)
    assert ax.get_ylim() == (0, 100)


def test_sweep_report_summarises_seeds_beside_the_per_trial_table(prefect_storage, tmp_path, monkeypatch):
    """The sweep's report task, in a flow: trials lr=0.001 x seeds 0,1 and
    lr=0.01 x seed 0 give sweep.csv (one row per trial) and sweep_seeds.csv
    (one row per setting, over its seeds), and the folder stays a sweep's."""
    import pandas as pd
    from prefect import flow

    from alexnet_pipeline.ownership import claim_sweep_folder
    from tasks.sweep import write_sweep_report

    sweep_dir = tmp_path / "sweep"
    claim_sweep_folder(sweep_dir)
    rows = []
    for trial, (lr, seed, accs) in enumerate([(0.001, 0, [0.40, 0.50]), (0.001, 1, [0.44, 0.54]),
                                               (0.01, 0, [0.30, 0.20])], start=1):
        run_dir = sweep_dir / f"trial-{trial:02d}"
        run_dir.mkdir()
        pd.DataFrame({"epoch": [1, 2], "test_acc": accs, "epoch_seconds": [3.0, 3.0]}).to_csv(
            run_dir / "accuracy.csv", index=False)
        rows.append({"trial": trial, "params": {"lr": lr, "seed": seed}, "run_dir": str(run_dir),
                     "state": "Completed", "best_epoch": 2 if accs[1] > accs[0] else 1,
                     "best_test_acc": max(accs), "final_test_acc": accs[1]})

    @flow
    def report_only():
        return write_sweep_report(str(sweep_dir), rows, ["lr", "seed"], ["lr", "seed"])

    # Each trial's newest checkpoint says how many classes there are: the
    # sweep's figure draws chance as each trial's own figure does.
    import torch

    from alexnet_pipeline.checkpoint import FORMAT
    from alexnet_pipeline.sweep import classes_of_run
    from tasks import sweep as sweep_tasks

    for row in rows:
        (Path(row["run_dir"]) / "checkpoints").mkdir()
        torch.save({"format": FORMAT, "class_names": [f"c{i}" for i in range(10)], "epoch": 2},
                   Path(row["run_dir"]) / "checkpoints" / "alexnet-02.pt")
    assert classes_of_run(rows[0]["run_dir"]) == 10 and classes_of_run(tmp_path) is None
    drawn_with = []
    real_figure = sweep_tasks.seed_band_figure
    monkeypatch.setattr(sweep_tasks, "seed_band_figure",
                        lambda curves, num_classes=None: drawn_with.append(num_classes) or real_figure(curves, num_classes))

    # The task's log says where the results are (shown in the sweep's flow-run logs).
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("prefect.task_runs").addHandler(handler)
    try:
        paths = report_only()
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(handler)
    located = [line for line in lines if line.startswith("sweep results: ")]
    assert len(located) == 1 and all(paths[name] in located[0] for name in ("sweep.csv", "sweep_seeds.csv", "sweep.png"))
    assert drawn_with == [10]
    assert len(pd.read_csv(paths["sweep.csv"])) == 3
    seeds = pd.read_csv(paths["sweep_seeds.csv"]).set_index("group")
    assert seeds.loc["lr=0.001", "n"] == 2 and seeds.loc["lr=0.001", "best_test_acc_mean"] == pytest.approx(0.52)
    assert seeds.loc["lr=0.001", "best_test_acc_min"] == 0.50 and seeds.loc["lr=0.01", "n"] == 1
    assert Path(paths["sweep.png"]).read_bytes()[:4] == b"\x89PNG"
    # Every file the report writes is one a sweep folder may hold.
    from alexnet_pipeline.ownership import SWEEP_FILES

    assert set(paths) <= set(SWEEP_FILES)
