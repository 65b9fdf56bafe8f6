"""A hyperparameter sweep as data: the list of trials, one summary row per
trial and the comparison figure. Launching the trials is flows/sweep.py's job.

    trials = expand_trials(grid={"lr": [1e-4, 3e-4], "batch_size": [64, 128]}, base={"preset": "smoke"})
    table = sweep_table(rows, param_keys(trials))
    fig = sweep_figure({"lr=0.0001": accuracy_curve("runs/sweeps/x/trial-01"), ...})
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd

from alexnet_pipeline.config import RUN_OPTIONS, absolute_path
from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.escape import plot_text
from alexnet_pipeline.report import best_row, selected_on

# train_seconds comes from the run folder (its epochs' recorded times), so it
# stays the real training time when a re-run of the sweep is a cache hit;
# wall_seconds is that flow run's own duration.
RESULT_COLUMNS = ["best_epoch", "selected_on", "best_val_acc", "best_test_acc", "final_test_acc", "epochs_done", "train_seconds", "wall_seconds",
                  "started_at", "ended_at", "run_dir", "flow_run_name", "flow_run_id", "error"]


def expand_trials(trials: list[dict] | None = None, grid: dict[str, list] | None = None,
                  base: dict | None = None) -> list[dict[str, Any]]:
    """Explicit `trials`, then every combination of `grid`'s values (first key
    varies slowest); `base` fills in what a trial does not set."""
    planned = [dict(t) for t in trials or []]
    for i, trial in enumerate(planned):
        if not isinstance(trial, dict):
            raise ConfigError(f"trials[{i}]: expected a mapping of parameters, got {trial!r}")
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        keys = list(grid)
        planned += [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if not planned:
        raise ConfigError("sweep: no trials; give trials (a list of parameter sets) and/or grid (parameter -> values)")
    return [{**(base or {}), **trial} for trial in planned]


def with_absolute_paths(trial: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters with its paths (config_file and the path
    settings: data_dir, cache_dir, weights, out) made absolute against this
    folder, as the trial's own command line would: a trial runs on a worker
    whose working folder is another."""
    def absolute(key: str, value: Any) -> Any:
        rule = absolute_path if key == "config_file" else getattr(RUN_OPTIONS.get(key), "absolute", None)
        return rule(value) if rule is not None and isinstance(value, str) else value

    return {key: absolute(key, value) for key, value in trial.items()}


def param_keys(trials: list[dict]) -> list[str]:
    """Every parameter any trial sets, in order of first appearance."""
    return list(dict.fromkeys(k for t in trials for k in t))


def varying_keys(trials: list[dict]) -> list[str]:
    return [k for k in param_keys(trials) if len({json.dumps(t.get(k), sort_keys=True) for t in trials}) > 1]


def trial_label(params: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={params.get(k)}" for k in keys) or "trial"


def sweep_id(trials: list[dict]) -> str:
    """Same trials, same id: re-running a sweep reuses (and resumes) its folders."""
    return hashlib.sha256(json.dumps(trials, sort_keys=True).encode()).hexdigest()[:10]


def default_sweep_dir(runs_root: Path, trials: list[dict]) -> Path:
    return Path(runs_root) / "sweeps" / f"sweep-{sweep_id(trials)}"


def accuracy_curve(run_dir: str | Path) -> pd.DataFrame:
    """The run's accuracy.csv (written by the full_run report)."""
    path = Path(run_dir) / "accuracy.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not write its report, "
                                "or it wrote it on a disk this machine does not see")
    return pd.read_csv(path)


def classes_of_run(run_dir: str | Path) -> int | None:
    """How many classes a run's model tells apart, as its newest checkpoint
    records (no weights read); None if no checkpoint says."""
    from alexnet_pipeline.checkpoint import list_checkpoints, read_run_record

    for path in reversed(list_checkpoints(Path(run_dir) / "checkpoints")):
        record = read_run_record(path)
        if record and record.get("class_names"):
            return len(record["class_names"])
    return None


def run_summary(curve: pd.DataFrame) -> dict[str, Any]:
    best = best_row(curve)
    return {"best_epoch": int(best["epoch"]), "selected_on": selected_on(curve),
            "best_val_acc": float(best["val_acc"]) if "val_acc" in best else float("nan"),
            "best_test_acc": float(best["test_acc"]),
            "final_test_acc": float(curve["test_acc"].iloc[-1]), "epochs_done": len(curve),
            "train_seconds": round(float(curve["epoch_seconds"].sum()), 1)}


def sweep_table(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, parameters, then results, and the
    trials' rank (1: best) by the selected epoch's validation accuracy (test
    accuracy where the trials have no validation split, and then say so in
    `selected_on`), so that the test set does not choose the trial either."""
    columns = ["trial", "state", *keys, "rank", *RESULT_COLUMNS]
    table = pd.DataFrame([{**row.get("params", {}), **row} for row in rows]).reindex(columns=columns)
    on_val = table["best_val_acc"].astype(float)
    score = on_val if on_val.notna().any() else table["best_test_acc"].astype(float)
    table["rank"] = score.rank(ascending=False, method="min").astype("Int64")
    return table


# Trials with equal results would draw over each other: each trial gets its
# own marker and line style, and its points are shifted sideways by a small,
# stated amount (at most this many epochs either side).
TRIAL_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
TRIAL_LINESTYLES = ["-", "--", "-.", ":"]
MAX_TRIAL_OFFSET = 0.15


def trial_offsets(count: int) -> list[float]:
    """Sideways shift of each trial's points, in epochs: symmetric around 0,
    all within +-MAX_TRIAL_OFFSET, none for a single trial."""
    if count <= 1:
        return [0.0] * count
    step = 2 * MAX_TRIAL_OFFSET / (count - 1)
    return [round(-MAX_TRIAL_OFFSET + i * step, 4) for i in range(count)]


def sweep_figure(curves: dict[str, pd.DataFrame], num_classes: int | None = None):
    """Test accuracy against epoch, one line per trial, in the report's style
    (0-100% axis, chance drawn when `num_classes` is given, whole epochs)."""
    import matplotlib.pyplot as plt

    from alexnet_pipeline.report import figure_style, style_accuracy_axis, style_epoch_axis

    with figure_style():
        fig, ax = plt.subplots(figsize=(8, 4.8))
        offsets = trial_offsets(len(curves))
        for i, ((label, curve), offset) in enumerate(zip(curves.items(), offsets)):
            ax.plot(curve["epoch"] + offset, curve["test_acc"] * 100, label=plot_text(label),
                    marker=TRIAL_MARKERS[i % len(TRIAL_MARKERS)],
                    linestyle=TRIAL_LINESTYLES[i % len(TRIAL_LINESTYLES)],
                    markerfacecolor="none" if i % 2 else None, alpha=0.9)
        if not curves:
            ax.text(0.5, 0.5, "no trial completed", ha="center", va="center", transform=ax.transAxes)
        style_accuracy_axis(ax, num_classes)
        style_epoch_axis(ax, [e for curve in curves.values() for e in curve["epoch"]])
        title = "Sweep: test accuracy per epoch"
        if len(curves) > 1:
            title += f"\n(points shifted sideways by up to {MAX_TRIAL_OFFSET:g} epoch so equal results stay visible)"
        ax.set(ylabel="test accuracy (top-1)", title=title)
        if curves or num_classes:
            ax.legend(loc="best")
        fig.tight_layout()
    return fig


# --- seeds: one training run is one sample ----------------------------------------


def seed_groups(rows: list[dict], label_keys: list[str]) -> dict[str, list[dict]]:
    """Completed trials grouped by every varying parameter except the seed
    (label -> rows), when at least one group holds two or more seeds; else {}."""
    keys = [k for k in label_keys if k != "seed"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["state"] == "Completed":
            groups.setdefault(trial_label(row["params"], keys) if keys else "all trials", []).append(row)
    return groups if any(len(members) > 1 for members in groups.values()) else {}


def seed_summary(groups: dict[str, list[dict]]) -> pd.DataFrame:
    """Per group: the seeds, and mean, standard deviation (over seeds, n-1)
    and min-max of the best and the final test accuracy."""
    records = []
    for label, members in groups.items():
        record = {"group": label, "seeds": " ".join(str(m["params"].get("seed", "")) for m in members),
                  "n": len(members)}
        for which in ("best_test_acc", "final_test_acc"):
            values = pd.Series([m[which] for m in members], dtype=float)
            record.update({f"{which}_mean": values.mean(), f"{which}_sd": values.std(ddof=1),
                           f"{which}_min": values.min(), f"{which}_max": values.max()})
        records.append(record)
    return pd.DataFrame(records)


def seed_band_figure(group_curves: dict[str, list[pd.DataFrame]], num_classes: int | None = None):
    """Test accuracy per epoch: per group, the mean over its seeds as a line
    and the min-max over seeds as a band (epochs that every seed reached)."""
    import matplotlib.pyplot as plt

    from alexnet_pipeline.report import figure_style, style_accuracy_axis, style_epoch_axis

    with figure_style():
        fig, ax = plt.subplots(figsize=(8, 4.8))
        epochs_drawn = []
        for i, (label, curves) in enumerate(group_curves.items()):
            table = pd.concat([c.set_index("epoch")["test_acc"] for c in curves], axis=1, join="inner") * 100
            line, = ax.plot(table.index, table.mean(axis=1), marker=TRIAL_MARKERS[i % len(TRIAL_MARKERS)],
                            linestyle=TRIAL_LINESTYLES[i % len(TRIAL_LINESTYLES)],
                            label=f"{plot_text(label)}: mean of {len(curves)} seed{'s' if len(curves) > 1 else ''}")
            if len(curves) > 1:
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.2,
                                label=f"{plot_text(label)}: min-max over seeds")
            epochs_drawn += list(table.index)
        style_accuracy_axis(ax, num_classes)
        style_epoch_axis(ax, epochs_drawn)
        ax.set(ylabel="test accuracy (top-1)", title="Sweep: test accuracy per epoch, mean over seeds with min-max band")
        ax.legend(loc="best")
        fig.tight_layout()
    return fig
