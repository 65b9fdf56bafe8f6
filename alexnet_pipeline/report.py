"""The accuracy report as data: DataFrames, matplotlib figures and markdown
text. Writing them to disk is the caller's job (tasks/report.py).

    df = epoch_table(history, evaluations)
    fig = accuracy_figure(df)
"""

from __future__ import annotations

import json
import platform

import pandas as pd

# Part of the report task's cache key: bump when a change here changes the
# files or artifacts the report writes.
REPORT_VERSION = 1
COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds", "images_per_s", "checkpoint"]


def epoch_table(history: list[dict], evaluations: list[dict]) -> pd.DataFrame:
    """One row per epoch; `evaluations[i]` is the EvalResult (as a dict) of
    the checkpoint of `history[i]`."""
    rows = []
    for stats, result in zip(history, evaluations, strict=True):
        rows.append({**stats, "test_loss": result["loss"], "test_acc": result["accuracy"]})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("epoch").reset_index(drop=True)


def best_row(df: pd.DataFrame) -> pd.Series:
    """Highest test accuracy; the earliest epoch wins a tie."""
    return df.loc[df["test_acc"].idxmax()]


def per_class_table(result: dict, class_names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "class": class_names,
        "accuracy": result["per_class_accuracy"],
        "images": [sum(row) for row in result["confusion"]],
    })


def accuracy_figure(df: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_row(df)
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    acc_ax.plot(df["epoch"], df["train_acc"] * 100, "o-", label="train")
    acc_ax.plot(df["epoch"], df["test_acc"] * 100, "o-", label="test")
    acc_ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
    # Label on the side of the line with more room: a best last epoch would
    # push it past the plot's right edge.
    in_second_half = best["epoch"] > (df["epoch"].min() + df["epoch"].max()) / 2
    acc_ax.annotate(f"best {best['test_acc'] * 100:.2f}% (epoch {int(best['epoch'])})",
                    (best["epoch"], best["test_acc"] * 100), textcoords="offset points",
                    xytext=(-5 if in_second_half else 5, -14), ha="right" if in_second_half else "left", fontsize=9)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    loss_ax.plot(df["epoch"], df["train_loss"], "o-", label="train (with label smoothing)")
    loss_ax.plot(df["epoch"], df["test_loss"], "o-", label="test (cross-entropy)")
    loss_ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    for ax in (acc_ax, loss_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: list[list[int]], class_names: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(confusion)
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def device_name(device: str) -> str:
    import torch

    from alexnet_pipeline.device_data import resolve_device

    resolved = resolve_device(device)
    return f"cuda ({torch.cuda.get_device_name(resolved)})" if resolved.type == "cuda" else "cpu"


def environment(device: str) -> dict:
    """Where the numbers were measured: device, torch and Python versions, host."""
    import torch

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def measurements(stage_seconds: dict[str, float], device: str) -> dict:
    """Seconds per stage plus this process's peak host and GPU memory."""
    import resource

    import torch

    from alexnet_pipeline.device_data import resolve_device

    gpu = resolve_device(device).type == "cuda"
    return {
        "stage_seconds": stage_seconds,
        # ru_maxrss is in KiB on Linux.
        "peak_host_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if gpu else None,
    }


def report_markdown(df: pd.DataFrame, best_result: dict, class_names: list[str], config: dict,
                    env: dict, measurements: dict, skipped_files: list[str]) -> str:
    best, final = best_row(df), df.iloc[-1]
    stage_seconds = measurements["stage_seconds"]
    memory = [f"peak host memory (RSS) {measurements['peak_host_memory_gb']:.2f} GB"]
    if measurements.get("peak_gpu_memory_gb") is not None:
        memory.append(f"peak GPU memory (allocated) {measurements['peak_gpu_memory_gb']:.2f} GB")
    per_class = per_class_table(best_result, class_names)
    lines = [
        "# AlexNet accuracy report",
        "",
        f"- best test accuracy: **{best['test_acc'] * 100:.2f}%** at epoch {int(best['epoch'])} "
        f"(`{best['checkpoint']}`)",
        f"- final test accuracy: {final['test_acc'] * 100:.2f}% at epoch {int(final['epoch'])}",
        f"- test images: {best_result['num_images']}, classes: {len(class_names)}, seed: {config['train']['seed']}, one run",
        f"- device: {env['device']}, torch {env['torch']}, Python {env['python']}",
        "",
        "## Accuracy per epoch",
        "",
        _markdown_table(df.assign(train_acc=df["train_acc"] * 100, test_acc=df["test_acc"] * 100)
                        .drop(columns=["checkpoint"]).rename(columns={"train_acc": "train_acc %", "test_acc": "test_acc %"})),
        "",
        "![accuracy](accuracy.png)",
        "",
        f"## Per-class accuracy (best checkpoint, epoch {int(best['epoch'])})",
        "",
        _markdown_table(per_class.assign(accuracy=per_class["accuracy"] * 100).rename(columns={"accuracy": "accuracy %"})),
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Time per stage (seconds, this invocation; cached stages take ~0)",
        "",
        _markdown_table(pd.DataFrame({"stage": [*stage_seconds, "total"],
                                      "seconds": [*stage_seconds.values(), sum(stage_seconds.values())]})),
        "",
        "Writing this report is not included (about 1-2 s). " + "; ".join(memory) + ".",
        "",
        "Training time summed over epochs (all invocations): "
        f"{df['epoch_seconds'].sum():.1f} s, mean {df['images_per_s'].mean():,.0f} images/s.",
        "",
    ]
    if skipped_files:
        lines += ["## Skipped image files (--skip-bad-images)", ""] + [f"- `{f}`" for f in skipped_files] + [""]
    lines += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def _markdown_table(df: pd.DataFrame) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    header = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
