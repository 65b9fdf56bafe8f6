from __future__ import annotations

import base64
import io
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alexnet_pipeline import faults
from alexnet_pipeline.escape import markdown_code
from alexnet_pipeline.files import atomic_path, atomic_write_text
from alexnet_pipeline.ownership import REPORT_FILES
from alexnet_pipeline.report import (
    REPORT_IMAGES,
    REPORT_VERSION,
    accuracy_csv,
    accuracy_figure,
    best_row,
    confusion_figure,
    environment,
    epoch_table,
    headline,
    measurements,
    report_markdown,
)
from alexnet_pipeline.timing import StageTimer
from tasks.caching import across_runs, call_cached

# Modest: the same PNG bytes are embedded (base64) in the UI's markdown
# artifact, about 150 KB for CIFAR-10's ten classes.
FIGURE_DPI = 110


def _png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# Timings and memory peaks differ on every invocation; leaving them out of the
# key keeps a finished run's report a cache hit (it then shows the run that made it).
@task(name="write-report", cache_policy=across_runs("report", REPORT_VERSION) - "measurements", persist_result=True)
def write_report(run_dir: str, rows: list[dict], best_result: dict, class_names: list[str], config: dict,
                 env: dict, measurements: dict, skipped_files: list[str]) -> dict[str, str]:
    """`rows`: the run record's, one per epoch; `best_result`: the selected
    epoch's full test result (EvalResult as a dict). `measurements`:
    {"stage_seconds": {stage: s}, "peak_host_memory_gb": x, "peak_gpu_memory_gb": y or None}."""
    out = Path(run_dir)
    df = epoch_table(rows)
    best_epoch = int(best_row(df)["epoch"])
    pngs = {
        "accuracy": _png_bytes(accuracy_figure(df, len(class_names), config.get("train", {}).get("label_smoothing"))),
        "confusion": _png_bytes(confusion_figure(best_result["confusion"], class_names,
                                                 f"Confusion matrix, selected epoch ({best_epoch})")),
    }
    report_args = (df, best_result, class_names, config, env, measurements, skipped_files)
    atomic_write_text(out / "accuracy.csv", accuracy_csv(df))
    for name, data in pngs.items():
        _write_bytes(out / REPORT_IMAGES[name], data)
    faults.crash_point("report")
    # On disk the images are the files beside report.md; the UI cannot serve
    # those, so the artifact carries them inline.
    atomic_write_text(out / "report.md", report_markdown(*report_args))
    inline = {name: "data:image/png;base64," + base64.b64encode(data).decode() for name, data in pngs.items()}
    create_table_artifact(df.to_dict(orient="records"), key="accuracy-per-epoch", description=f"{markdown_code(run_dir)}: accuracy per epoch")
    create_markdown_artifact(report_markdown(*report_args, images=inline), key="accuracy-report",
                             description=f"{markdown_code(run_dir)}: report.md, images inline")
    return {name: str(out / name) for name in REPORT_FILES}


def still_valid(paths: dict[str, str]) -> bool:
    return all(Path(p).is_file() for p in paths.values())


def report_run(run_dir: str, summary: dict, meta: dict, config: dict, device: str, timer: StageTimer) -> dict:
    """Write the run's report (cached) from a run record's summary
    (record.RunRecord.summary) and sum the run up, as full_run and
    evaluate-latest return it: the run folder, the selected epoch, what it
    was selected on, its validation and test accuracy, the final epoch's
    test accuracy and the report's file paths."""
    rows = summary["rows"]
    paths = call_cached(
        write_report, still_valid, run_dir=run_dir, rows=rows, best_result=summary["selected_result"],
        class_names=meta["class_names"], config=config, env=environment(device),
        measurements={**measurements(timer.seconds, device), "start_up": timer.start_up}, skipped_files=meta.get("skipped_files", []),
    )
    best = next(r for r in rows if r["epoch"] == summary["selected_epoch"])
    result = {"run_dir": run_dir, "best_epoch": best["epoch"], "selected_on": summary["selected_on"],
              "best_val_acc": best["val_acc"], "best_test_acc": best["test_acc"],
              "final_test_acc": rows[-1]["test_acc"], **paths}
    return {**result, "headline": headline(result)}
