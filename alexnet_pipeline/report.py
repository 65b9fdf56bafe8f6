"""The accuracy report as data: DataFrames, matplotlib figures and markdown
text. Writing them to disk is the caller's job (tasks/report.py).

    df = epoch_table(rows)                     # rows: the run record's (alexnet_pipeline.record)
    fig = accuracy_figure(df)
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

from alexnet_pipeline.config import CIFAR10_ONLY_FIELDS, default_lr
from alexnet_pipeline.escape import markdown_code, markdown_code_block, markdown_text, plot_text
from alexnet_pipeline.record import select_epoch, uses_validation

# Part of the report task's cache key: bump when a change here changes the
# files or artifacts the report writes.
REPORT_VERSION = 3
# Accuracies are fractions (0.923), as torch and pandas compute them; the
# report shows them as percent. `evaluated`: "now" for a checkpoint scored
# by this invocation or during training, "recorded" for an epoch whose
# checkpoint is gone and whose numbers come from the run record.
COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
           "epoch_seconds", "images_per_s", "val_images", "test_images", "checkpoint", "evaluated"]


def epoch_table(rows: list[dict]) -> pd.DataFrame:
    """One row per epoch, from the run record's rows (record.row_of)."""
    table = pd.DataFrame([{"evaluated": "now", **row} for row in rows], columns=COLUMNS)
    table[["val_loss", "val_acc"]] = table[["val_loss", "val_acc"]].astype(float)
    return table.sort_values("epoch").reset_index(drop=True)


# The one rule for numbers in this pipeline's CSV files (accuracy.csv,
# sweep.csv): accuracies are fractions (0.891, not 89.1; the report and the
# command line show percent), and every float is written with ten significant
# digits: more than any accuracy, loss or time here means, few enough that
# binary leftovers (0.41000000000000003) do not show.
CSV_FLOAT_FORMAT = "%.10g"


def accuracy_csv(df: pd.DataFrame) -> str:
    """accuracy.csv's text from the per-epoch table (see CSV_FLOAT_FORMAT)."""
    return df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT)


def shown_config(config: dict) -> tuple[dict, list[str]]:
    """The config as report.md shows it, and what the reader must know about
    it (markdown): the lr actually used where none was set (the default is chosen from
    the weights and the batch size), and no CIFAR-10 download settings in a
    run on an image folder (they were not used)."""
    shown = json.loads(json.dumps(config))
    notes = []
    train, data = shown.get("train", {}), shown.get("data", {})
    if "lr" in train and train["lr"] is None and "batch_size" in train:
        weights = shown.get("model", {}).get("weights", "imagenet")
        # Ten significant digits, as in the CSV files: 1.171875e-05, not 1.1718749999999999e-05.
        train["lr"] = float(f"{default_lr(weights, train['batch_size']):.10g}")
        notes.append(f"train.lr was not set: {train['lr']:.3g} is the default for weights {markdown_code(weights)} "
                     f"at batch size {train['batch_size']}, the lr this run used.")
    if data.get("dataset") == "imagefolder":
        for key in CIFAR10_ONLY_FIELDS:
            data.pop(key, None)
    return shown, notes


def best_row(df: pd.DataFrame) -> pd.Series:
    """The selected epoch's row (record.select_epoch: highest validation
    accuracy, or test accuracy for a run without a split; the earliest epoch
    on a tie)."""
    epoch = select_epoch(df.to_dict(orient="records"))
    return df.loc[df["epoch"] == epoch].iloc[0]


def selected_on(df: pd.DataFrame) -> str:
    return "validation" if uses_validation(df.to_dict(orient="records")) else "test"


def per_class_table(result: dict, class_names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "class": class_names,
        "accuracy": result["per_class_accuracy"],
        "images": [sum(row) for row in result["confusion"]],
    })


# One look for every figure (accuracy.png, confusion.png, sweep.png): the same
# fonts, grid, colours and reference lines, sized to be legible at the
# modest DPI the report embeds them at.
FIGURE_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.5, "lines.markersize": 5,
}
# Train and test differ in marker as well as colour (legible in greyscale and
# when the two points of an epoch coincide).
TRAIN_COLOR, TEST_COLOR, VAL_COLOR = "tab:blue", "tab:orange", "tab:green"
TRAIN_MARKER, TEST_MARKER, VAL_MARKER = "s-", "o-", "^-"
CHANCE_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1}
BEST_STYLE = {"color": "0.5", "linestyle": ":", "linewidth": 1}


def figure_style():
    """Context in which a figure is built: `with figure_style(): fig = ...`."""
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib.rc_context(FIGURE_STYLE)


def chance_accuracy(num_classes: int) -> float:
    """Top-1 accuracy of guessing (or of always answering the largest class of a balanced test set)."""
    return 1.0 / num_classes


def style_accuracy_axis(ax, num_classes: int | None) -> None:
    """The whole 0-100% range, so noise of a few points looks like a few
    points, and the chance level drawn when the number of classes is known."""
    from matplotlib.ticker import MultipleLocator, PercentFormatter

    ax.set_ylim(0, 100)
    ax.yaxis.set_major_locator(MultipleLocator(20))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    if num_classes:
        chance = chance_accuracy(num_classes) * 100
        ax.axhline(chance, **CHANCE_STYLE, label=f"chance ({chance:.{_decimals(chance)}f}%)", zorder=1)


def style_epoch_axis(ax, epochs) -> None:
    """Whole epochs only: a one-epoch run gets the single tick 1, not 0.96..1.04."""
    from matplotlib.ticker import MaxNLocator

    epochs = sorted({int(e) for e in epochs}) or [1]
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    if len(epochs) <= 15:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def accuracy_figure(df: pd.DataFrame, num_classes: int | None = None, label_smoothing: float | None = None):
    """Accuracy (0-100%, chance drawn) and loss (from 0, a uniform guess's
    loss drawn) per epoch: train, validation (when the run has a split) and
    test; the selected epoch marked, with what it was selected on."""
    import math

    import matplotlib.pyplot as plt

    best, on = best_row(df), selected_on(df)
    with_val = on == "validation"
    with figure_style():
        fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
        acc_ax.plot(df["epoch"], df["train_acc"] * 100, TRAIN_MARKER, color=TRAIN_COLOR, label="train")
        if with_val:
            acc_ax.plot(df["epoch"], df["val_acc"] * 100, VAL_MARKER, color=VAL_COLOR, label="validation")
        acc_ax.plot(df["epoch"], df["test_acc"] * 100, TEST_MARKER, color=TEST_COLOR, label="test")
        # The selected epoch is named in the legend, not in a text label that
        # would sit on the curves of a long run.
        acc_ax.axvline(best["epoch"], **BEST_STYLE,
                       label=f"selected on {on}: epoch {int(best['epoch'])}, test {format_percent(best['test_acc'])}")
        # A ring, not a filled marker: it must not hide the points under it.
        acc_ax.plot([best["epoch"]], [best["test_acc"] * 100], "o", markersize=12, markerfacecolor="none",
                    markeredgecolor="black", markeredgewidth=1, zorder=3)
        style_accuracy_axis(acc_ax, num_classes)
        style_epoch_axis(acc_ax, df["epoch"])
        acc_ax.set(ylabel="top-1 accuracy", title="Accuracy per epoch")

        smoothing = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
        loss_ax.plot(df["epoch"], df["train_loss"], TRAIN_MARKER, color=TRAIN_COLOR, label=f"train{smoothing}")
        if with_val:
            loss_ax.plot(df["epoch"], df["val_loss"], VAL_MARKER, color=VAL_COLOR, label="validation (cross-entropy)")
        loss_ax.plot(df["epoch"], df["test_loss"], TEST_MARKER, color=TEST_COLOR, label="test (cross-entropy)")
        loss_ax.axvline(best["epoch"], **BEST_STYLE)
        top = max(df["train_loss"].max(), df["test_loss"].max(), df["val_loss"].max() if with_val else 0)
        if num_classes:
            # A uniform prediction's cross-entropy is ln(C), label smoothing or not.
            uniform = math.log(num_classes)
            loss_ax.axhline(uniform, **CHANCE_STYLE, label=f"uniform guess (ln {num_classes} = {uniform:.2f})", zorder=1)
            top = max(top, uniform)
        loss_ax.set_ylim(0, top * 1.15 if top > 0 else 1)
        style_epoch_axis(loss_ax, df["epoch"])
        loss_ax.set(ylabel="loss", title="Loss per epoch")
        for ax in (acc_ax, loss_ax):
            ax.legend(loc="best")
        fig.tight_layout()
    return fig


def confusion_figure(confusion: list[list[int]], class_names: list[str], title: str):
    """Counts as colours (colorbar in whole images), each cell's count and
    its share of the true class's images written in it (up to 20 classes)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    matrix = np.asarray(confusion, dtype=int)
    n = len(class_names)
    size = min(14.0, max(4.5, 0.6 * n + 2))
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0) * 100
    with figure_style():
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max(initial=0))))
        ax.grid(False)
        colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        colorbar.set_label("test images (count)")
        colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        # Many classes: upright labels would overlap, small ones still fit.
        tick_size = 8 if n <= 20 else 6 if n <= 100 else 5
        labels = [plot_text(name) for name in class_names]
        ax.set_xticks(range(n), labels, rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center",
                      fontsize=tick_size)
        ax.set_yticks(range(n), labels, fontsize=tick_size)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        if n <= 20:
            threshold = matrix.max(initial=0) / 2
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{matrix[i, j]}\n{shares[i, j]:.0f}%", ha="center", va="center",
                            fontsize=7 if n > 6 else 8, linespacing=1.1,
                            color="white" if matrix[i, j] > threshold else "black")
            fig.text(0.01, 0.01, "each cell: images, and % of the true class's images (row)", fontsize=7, color="0.3")
        fig.tight_layout()
    return fig


def device_name(device: str) -> str:
    if device == "cpu":  # no torch to import (seconds) for a re-run whose stages are all cached
        return "cpu"
    import torch

    from alexnet_pipeline.device_data import resolve_device

    resolved = resolve_device(device)
    return f"cuda ({torch.cuda.get_device_name(resolved)})" if resolved.type == "cuda" else "cpu"


def environment(device: str) -> dict:
    """Where the numbers were measured: device, torch and Python versions, host."""
    return {
        "device": device_name(device),
        "torch": torch_version(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def measurements(stage_seconds: dict[str, float], device: str) -> dict:
    """Seconds per stage plus this process's peak host and GPU memory."""
    import resource

    gpu = device != "cpu" and device_name(device) != "cpu"  # torch only where a GPU may be in use
    if gpu:
        import torch
    return {
        "stage_seconds": stage_seconds,
        # ru_maxrss is in KiB on Linux.
        "peak_host_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if gpu else None,
    }


def torch_version() -> str:
    """torch.__version__ (2.14.1+cu130, say), read from the torch/version.py
    that torch's build writes, without importing torch: seconds that a
    re-run whose stages are all cached does not need."""
    import importlib.util
    import re
    import sys
    from pathlib import Path

    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            found = re.search(r"^__version__ = '([^']+)'$", (Path(folder) / "version.py").read_text(), re.MULTILINE)
        except OSError:
            continue
        if found:
            return found.group(1)
    import torch

    return torch.__version__


def _start_up_line(start_up: dict[str, float] | None) -> list[str]:
    """The start-up stage's parts, which overlap (the server boots while the
    flow's modules are imported): when each was done, not how long it took."""
    if not start_up:
        return []
    steps = ", ".join(f"{step} at {seconds:.1f} s" for step, seconds in start_up.items())  # the command line's own words
    return [f"Start-up, seconds after the process started: {steps}.", ""]


# A result is "near chance" when even its best epoch closes less than this
# share of the gap between chance and 100%, or lies within this many binomial
# standard errors of chance (a small test set cannot show more). The smoke
# preset's 15% on 1000 CIFAR-10 images is near chance; a fine-tuned AlexNet's
# 85-90% is not.
NEAR_CHANCE_SHARE_OF_GAP = 0.10
NEAR_CHANCE_STANDARD_ERRORS = 3.0

# Markdown headers and number formats of the per-epoch table: accuracies in
# percent with one decimal, losses with three, everywhere in the report.
EPOCH_TABLE = {
    "epoch": ("Epoch", "{:d}"),
    "train_loss": ("Train loss", "{:.3f}"),
    "train_acc": ("Train accuracy (%)", "percent"),
    "val_loss": ("Validation loss", "{:.3f}"),
    "val_acc": ("Validation accuracy (%)", "percent"),
    "test_loss": ("Test loss", "{:.3f}"),
    "test_acc": ("Test accuracy (%)", "percent"),
    "lr": ("Learning rate", "{:.3g}"),
    "epoch_seconds": ("Epoch time (s)", "{:.1f}"),
    "images_per_s": ("Images/s", "{:,.0f}"),
}
REPORT_IMAGES = {"accuracy": "accuracy.png", "confusion": "confusion.png"}


def format_percent(fraction: float, sign: bool = True) -> str:
    """An accuracy as the report writes it everywhere: 0.154 -> '15.4%'."""
    return f"{fraction * 100:.1f}" + ("%" if sign else "")


def _decimals(percent: float) -> int:
    return 0 if float(percent).is_integer() else 1


def _binomial_half_width(accuracy: float, num_images: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy
    measured on `num_images` images (the test set's sampling noise only)."""
    import math

    return z * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(num_images, 1))


def is_near_chance(accuracy: float, num_classes: int, num_images: int) -> bool:
    chance = chance_accuracy(num_classes)
    margin = max(NEAR_CHANCE_SHARE_OF_GAP * (1 - chance),
                 NEAR_CHANCE_STANDARD_ERRORS * _binomial_half_width(chance, num_images, z=1.0))
    return accuracy < chance + margin


def verdict(best_acc: float, final_acc: float, num_classes: int, num_images: int, on: str = "test",
            val_acc: float | None = None, val_images: int = 0) -> str:
    """One line a reader can act on: is this a result, and which number to
    quote. `on`: what the best epoch was selected on ("validation" or "test")."""
    chance = format_percent(chance_accuracy(num_classes))
    if is_near_chance(best_acc, num_classes, num_images):
        return (f"near chance: a demonstration that the pipeline runs, not a result "
                f"(best {format_percent(best_acc)} against {chance} chance for {num_classes} classes, "
                f"{num_images:,} test images).")
    if on == "validation":
        half = _binomial_half_width(best_acc, num_images) * 100
        return (f"above chance ({chance} for {num_classes} classes). Quote the selected epoch's test accuracy, "
                f"{format_percent(best_acc)} ± {half:.1f} points (95% interval from {num_images:,} test images, "
                f"one run): the epoch was selected on the validation split ({format_percent(val_acc)} on "
                f"{val_images:,} held-out training images), so the test set played no part in choosing it.")
    half = _binomial_half_width(final_acc, num_images) * 100
    return (f"above chance ({chance} for {num_classes} classes). Quote the final epoch, "
            f"{format_percent(final_acc)} ± {half:.1f} points (95% interval from {num_images:,} test images, one run): "
            f"the best epoch was selected on the test set (this run has no validation split), so its "
            f"{format_percent(best_acc)} is optimistic.")


def headline(summary: dict) -> str:
    """The command line's last words about a run (full_run, evaluate)."""
    on = summary["selected_on"]
    chosen = (f"validation {summary['best_val_acc'] * 100:.2f}%, " if on == "validation" else "")
    return (f"selected epoch {summary['best_epoch']} (on the {'validation split' if on == 'validation' else 'test set'}): "
            f"{chosen}test {summary['best_test_acc'] * 100:.2f}%; final epoch test {summary['final_test_acc'] * 100:.2f}%")


def epoch_markdown_table(df: pd.DataFrame) -> str:
    """The per-epoch table with readable headers, the best epoch marked."""
    best_epoch = int(best_row(df)["epoch"])
    columns = [c for c in EPOCH_TABLE if c in df.columns
               and (selected_on(df) == "validation" or c not in ("val_loss", "val_acc"))]
    rows = []
    for _, row in df.iterrows():
        cells = [_format_cell(row[c], EPOCH_TABLE[c][1]) for c in columns]
        if int(row["epoch"]) == best_epoch:
            cells[0] += " (selected)"
        if row.get("evaluated") == "recorded":
            cells[0] += " (recorded)"
        rows.append(cells)
    return _markdown_table([EPOCH_TABLE[c][0] for c in columns], rows)


def report_markdown(df: pd.DataFrame, best_result: dict, class_names: list[str], config: dict,
                    env: dict, measurements: dict, skipped_files: list[str],
                    images: dict[str, str] | None = None) -> str:
    """report.md's text. `images` maps "accuracy" and "confusion" to what the
    image links point at: the PNG files beside report.md by default, data:
    URIs for Prefect's UI (which cannot serve files from the run folder)."""
    images = {**REPORT_IMAGES, **(images or {})}
    best, final, on = best_row(df), df.iloc[-1], selected_on(df)
    num_classes, num_images = len(class_names), int(best_result["num_images"])
    val_images = int(best.get("val_images") or 0) if on == "validation" else 0
    stage_seconds = measurements["stage_seconds"]
    memory = [f"peak host memory (RSS) {measurements['peak_host_memory_gb']:.2f} GB"]
    if measurements.get("peak_gpu_memory_gb") is not None:
        memory.append(f"peak GPU memory (allocated) {measurements['peak_gpu_memory_gb']:.2f} GB")
    per_class = per_class_table(best_result, class_names)
    best_epoch = int(best["epoch"])
    smoothing = config.get("train", {}).get("label_smoothing")
    lines = [
        "# AlexNet accuracy report",
        "",
        f"**Verdict:** {verdict(best['test_acc'], final['test_acc'], num_classes, num_images, on, best['val_acc'], val_images)}",
        "",
        (f"- selected epoch: {best_epoch}, the highest validation accuracy ({format_percent(best['val_acc'])} on "
         f"{val_images:,} images held out of the training set, the same for every seed and trial)"
         if on == "validation" else
         f"- selected epoch: {best_epoch}, the highest test accuracy (no validation split: chosen on the test "
         "set, so its test accuracy is optimistic)"),
        f"- test accuracy of the selected epoch: **{format_percent(best['test_acc'])}** ± "
        f"{_binomial_half_width(best['test_acc'], num_images) * 100:.1f} points (95% interval) "
        f"({markdown_code(best['checkpoint'])})",
        f"- final test accuracy: {format_percent(final['test_acc'])} at epoch {int(final['epoch'])}",
        f"- chance: {format_percent(chance_accuracy(num_classes))} ({num_classes} classes); "
        f"test images: {num_images:,}; seed: {config['train']['seed']}; one run",
        f"- device: {env['device']}, torch {env['torch']}, Python {env['python']}",
        "",
        "## Accuracy per epoch",
        "",
        epoch_markdown_table(df),
        "",
        "Train loss and accuracy are measured on the augmented training batches as they were trained"
        + (f" (loss with label smoothing {smoothing:g})" if smoothing else "")
        + "; validation and test loss are plain cross-entropy. accuracy.csv holds the same numbers, "
        "accuracies as fractions of 1 (0.5 for 50.0%)."
        + (" Rows marked (recorded) are from the run record: their checkpoints are no longer on disk."
           if (df["evaluated"] == "recorded").any() else ""),
        "",
        f"![Accuracy and loss per epoch]({images['accuracy']})",
        "",
        f"## Per-class test accuracy (selected epoch, {best_epoch})",
        "",
        _markdown_table(["Class", "Accuracy (%)", "Test images"],
                        [[markdown_text(name), format_percent(acc, sign=False), f"{images_:,}"]
                         for name, acc, images_ in per_class.itertuples(index=False)]),
        "",
        f"![Confusion matrix, epoch {best_epoch}]({images['confusion']})",
        "",
        "## Time per stage (this invocation; cached stages take ~0 s)",
        "",
        _markdown_table(["Stage", "Seconds"],
                        [[stage, f"{seconds:.1f}"] for stage, seconds in
                         [*stage_seconds.items(), ("total", sum(stage_seconds.values()))]]),
        "",
        "Writing this report is not included (about 1-2 s). " + "; ".join(memory) + ".",
        "",
        *_start_up_line(measurements.get("start_up")),
        "Training time summed over epochs (all invocations): "
        f"{df['epoch_seconds'].sum():.1f} s, mean {df['images_per_s'].mean():,.0f} images/s.",
        "",
    ]
    if skipped_files:
        lines += ["## Skipped image files (--skip-bad-images)", ""] + [f"- {markdown_code(f)}" for f in skipped_files] + [""]
    shown, notes = shown_config(config)
    lines += ["## Configuration", "", *notes, *([""] if notes else []),
              markdown_code_block(json.dumps(shown, indent=2), "json"), ""]
    return "\n".join(lines)


def _format_cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if fmt == "percent":
        return format_percent(float(value), sign=False)
    if fmt == "{:d}":
        return f"{int(value):d}"
    return fmt.format(float(value))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    # First column (epoch, class, stage) left, the numbers right-aligned.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])
