"""The predict task: classify files with a checkpoint, write predictions.csv,
and show the first rows in the UI as a table artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from alexnet_pipeline.files import atomic_write_text
from alexnet_pipeline.predict import predict_files, predictions_csv

# Rows shown in the artifact: the server keeps every artifact in its
# database, and a nightly run over a large folder would otherwise store
# the whole CSV there each night. The file has every row.
ARTIFACT_ROWS = 200
FAILURES_LOGGED = 10


# Not cached: the same folder holds other images from one night to the next.
@task(name="predict", cache_policy=NO_CACHE)
def predict_task(checkpoint: str, files: list[str], out: str, top_k: int, batch_size: int | None, device: str,
                 workers: int | None) -> dict:
    logger = get_run_logger()
    result = predict_files(checkpoint, [Path(f) for f in files], top_k=top_k, device=device,
                           batch_size=batch_size, workers=workers)
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, predictions_csv(result))
    for line in result.failed[:FAILURES_LOGGED]:
        logger.warning("not classified: %s", line)
    if len(result.failed) > FAILURES_LOGGED:
        logger.warning("... and %d more not classified (see %s)", len(result.failed) - FAILURES_LOGGED, out_path)
    shown = result.rows[:ARTIFACT_ROWS]
    create_table_artifact(
        [{key: ("" if value is None else value) for key, value in row.items()} for row in shown], key="predictions",
        description=(f"{checkpoint}: {result.num_predicted} of {len(result.rows)} files classified"
                     + (f"; the first {len(shown)} rows, all of them in {out_path.resolve()}"
                        if len(shown) < len(result.rows) else f"; also in {out_path.resolve()}")),
    )
    folder = result.folder_accuracy()
    summary = {"checkpoint": checkpoint, "out": str(out_path), "files": len(result.rows),
               "predicted": result.num_predicted, "failed": len(result.failed), "device": result.device,
               "seconds": round(result.seconds, 3),
               "images_per_s": round(result.num_predicted / result.seconds, 1) if result.seconds > 0 else None,
               "folder_correct": folder[0] if folder else None, "folder_total": folder[1] if folder else None}
    logger.info("%d of %d files classified in %.1f s on %s; predictions in %s", summary["predicted"],
                summary["files"], result.seconds, result.device, out_path)
    return summary
