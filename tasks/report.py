from __future__ import annotations

import io
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alexnet_pipeline import faults
from alexnet_pipeline.files import atomic_path, atomic_write_text
from alexnet_pipeline.ownership import REPORT_FILES
from alexnet_pipeline.report import (
    accuracy_figure,
    best_row,
    confusion_figure,
    epoch_table,
    report_markdown,
)
from tasks.caching import ACROSS_RUNS


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


# Timings and memory peaks differ on every invocation; leaving them out of the
# key keeps a finished run's report a cache hit (it then shows the run that made it).
@task(name="write-report", cache_policy=ACROSS_RUNS - "measurements", persist_result=True)
def write_report(run_dir: str, history: list[dict], evaluations: list[dict], class_names: list[str], config: dict,
                 env: dict, measurements: dict, skipped_files: list[str]) -> dict[str, str]:
    """`measurements`: {"stage_seconds": {stage: s}, "peak_host_memory_gb": x, "peak_gpu_memory_gb": y or None}."""
    out = Path(run_dir)
    df = epoch_table(history, evaluations)
    best_index = int(best_row(df).name)
    best_result = evaluations[[h["epoch"] for h in history].index(int(df.loc[best_index, "epoch"]))]
    markdown = report_markdown(df, best_result, class_names, config, env, measurements, skipped_files)
    atomic_write_text(out / "accuracy.csv", df.to_csv(index=False))
    _save_figure(accuracy_figure(df), out / "accuracy.png")
    _save_figure(confusion_figure(best_result["confusion"], class_names,
                                  f"Confusion matrix, epoch {int(df.loc[best_index, 'epoch'])}"), out / "confusion.png")
    faults.crash_point("report")
    atomic_write_text(out / "report.md", markdown)
    create_table_artifact(df.to_dict(orient="records"), key="accuracy-per-epoch", description=f"{run_dir}: accuracy per epoch")
    create_markdown_artifact(markdown, key="accuracy-report", description=f"{run_dir}: report.md")
    return {name: str(out / name) for name in REPORT_FILES}


def still_valid(paths: dict[str, str]) -> bool:
    return all(Path(p).is_file() for p in paths.values())
