"""Predicting with a trained run: the evaluation's preprocessing and forward
pass on files (image for image the evaluation's result), the selected
checkpoint, bad files reported in the CSV, and refusals before Prefect starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alexnet_pipeline.cache import load_arrays
from alexnet_pipeline.checkpoint import load_checkpoint
from alexnet_pipeline.evaluate import batch_logits, evaluate_checkpoint, prepared_model
from alexnet_pipeline.integrity import sha256_file
from alexnet_pipeline.predict import checkpoint_preprocessing, image_files, predict_files
from alexnet_pipeline.record import RECORD_NAME, RunRecord
from alexnet_pipeline.selection import selected_checkpoint
from tests.fixtures import trained_image_folder_run

CLASSES = ("cat", "dog", "ship")


@pytest.fixture(scope="module")
def trained(module_tmp):
    return trained_image_folder_run(module_tmp("predict"), CLASSES)


def test_predicting_the_test_folder_reproduces_the_evaluation_image_for_image(trained):
    checkpoint = selected_checkpoint(trained["run_dir"])
    evaluation = evaluate_checkpoint(checkpoint, trained["dataset_dir"], device="cpu", batch_size=4)
    result = predict_files(checkpoint, image_files([trained["data"] / "test"]), top_k=2, device="cpu")

    assert not result.failed and len(result.rows) == evaluation.num_images == 15
    confusion = np.zeros((3, 3), dtype=int)
    for row in result.rows:
        confusion[CLASSES.index(Path(row["path"]).parent.name), CLASSES.index(row["predicted"])] += 1
    assert confusion.tolist() == evaluation.confusion
    correct, total = result.folder_accuracy()
    assert correct / total == evaluation.accuracy
    # Image for image: the evaluation's forward pass on the cached test images
    # (stored in the same order: class folders, then file names).
    ckpt = load_checkpoint(checkpoint)
    model, transform = prepared_model(ckpt, torch.device("cpu"))
    with torch.no_grad():
        cached = torch.from_numpy(np.array(load_arrays(trained["dataset_dir"]).test_images))
        probabilities = torch.softmax(batch_logits(model, cached, transform), 1)
    assert [row["predicted"] for row in result.rows] == [CLASSES[i] for i in probabilities.argmax(1).tolist()]
    assert [row["probability"] for row in result.rows] == pytest.approx(probabilities.max(1).values.tolist(), abs=1e-6)
    assert all(row["class_1"] == row["predicted"] and row["probability_1"] >= row["probability_2"] for row in result.rows)
    # What the checkpoint says about its own preprocessing.
    assert checkpoint_preprocessing(ckpt) == checkpoint_preprocessing({**ckpt, "stored_size": None})
    assert (checkpoint_preprocessing(ckpt).stored_size, checkpoint_preprocessing(ckpt).image_size) == (40, 64)


def test_selected_checkpoint_is_the_reports_selected_epoch(trained, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run_dir, ignore=shutil.ignore_patterns("alexnet-*.pt"))
    for epoch in (1, 2):  # every epoch's checkpoint, whatever retention kept
        shutil.copy(trained["run_dir"] / "checkpoints" / "alexnet-02.pt", run_dir / "checkpoints" / f"alexnet-0{epoch}.pt")
    record = RunRecord.load(run_dir)
    for row in record.rows:
        row["checkpoint_sha256"] = sha256_file(run_dir / row["checkpoint"])
    # The run record's selected epoch, chosen on validation: here epoch 1, though its test accuracy is lower.
    record.rows[0].update(val_acc=0.9, test_acc=0.1)
    record.rows[1].update(val_acc=0.5, test_acc=0.9)
    record.kept = {1: record.rows[0]["checkpoint_sha256"], 2: record.rows[1]["checkpoint_sha256"]}
    record.save(run_dir)
    assert selected_checkpoint(run_dir).name == "alexnet-01.pt"
    (run_dir / RECORD_NAME).unlink()
    # A run folder without a record: its accuracy.csv, by the same rule.
    pd.DataFrame({"epoch": [1, 2], "val_acc": [0.4, 0.6], "test_acc": [0.6, 0.4]}).to_csv(run_dir / "accuracy.csv", index=False)
    assert selected_checkpoint(run_dir).name == "alexnet-02.pt"
    pd.DataFrame({"epoch": [1, 2], "test_acc": [0.5, 0.5]}).to_csv(run_dir / "accuracy.csv", index=False)
    assert selected_checkpoint(run_dir).name == "alexnet-01.pt"  # no split, a tie: the earliest, as the report says
    assert selected_checkpoint(run_dir, epoch=2).name == "alexnet-02.pt"
    (run_dir / "accuracy.csv").unlink()
    # No report yet: the newest checkpoint, said in the log.
    assert selected_checkpoint(run_dir).name == "alexnet-02.pt"
    assert "no report" in caplog.text


def test_bad_and_non_image_files_are_reported_in_the_csv_not_fatal(trained, run_main, prefect_storage, tmp_path,
                                                                     monkeypatch):
    import tasks.predict

    folder = tmp_path / "incoming"
    (folder / "deeper").mkdir(parents=True)
    shutil.copy(next((trained["data"] / "test" / "dog").iterdir()), folder / "deeper" / "good.jpg")
    good = (folder / "deeper" / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.jpg").write_bytes(b"")  # hidden files are not the user's images
    monkeypatch.setattr(tasks.predict, "ARTIFACT_ROWS", 2)

    code, err = run_main([str(trained["run_dir"]), str(folder), "--out", "out/p.csv", "--top-k", "9"],
                         command="predict", prefect=True)

    assert code == 0, err
    assert "Traceback" not in err and err.count("not classified:") == 3, err
    table = pd.read_csv(tmp_path / "out" / "p.csv", keep_default_na=False)
    by_name = {Path(p).name: row for p, row in zip(table["path"], table.to_dict("records"))}
    assert set(by_name) == {"good.jpg", "truncated.jpg", "empty.png", "notes.txt"}
    assert by_name["good.jpg"]["error"] == "" and by_name["good.jpg"]["predicted"] in CLASSES
    assert list(table.columns[-7:]) == ["class_1", "probability_1", "class_2", "probability_2", "class_3",
                                        "probability_3", "error"]  # top-k capped at the 3 classes
    assert "OSError" in by_name["truncated.jpg"]["error"] or "truncated" in by_name["truncated.jpg"]["error"]
    assert "UnidentifiedImageError" in by_name["empty.png"]["error"]
    assert by_name["notes.txt"]["error"] == "not an image file"
    assert all(by_name[name]["predicted"] == "" for name in ("truncated.jpg", "empty.png", "notes.txt"))
    # The UI's table: capped (here at 2 rows), and it says where the rest are.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["predictions"])),
                                         sort="CREATED_DESC", limit=1)[0]
    rows = artifact.data if isinstance(artifact.data, list) else __import__("json").loads(artifact.data)
    assert len(rows) == 2 and "the first 2 rows" in artifact.description and "p.csv" in artifact.description


@pytest.mark.parametrize("argv, code, message", [
    (["nowhere", "photos"], 1, "nowhere does not exist; give a run folder"),
    (["{run}", "nothing-here"], 1, "nothing-here does not exist; give image files or folders"),
    (["{run}", "{data}", "--epoch", "7"], 1, "has no intact checkpoint for epoch 7"),
    (["{run}", "{data}", "--top-k", "0"], 2, "--top-k: must be at least 1, got 0"),
    (["{data}", "{data}"], 1, "holds no checkpoints"),
    (["{run}/checkpoints/alexnet-01.pt", "{data}", "--epoch", "1"], 1, "--epoch picks a checkpoint of a run folder"),
])
def test_refusals_come_before_prefect_starts_as_one_error_line(trained, run_main, argv, code, message):
    argv = [a.format(run=trained["run_dir"], data=trained["data"]) for a in argv]
    status, err = run_main(argv, command="predict")
    assert status == code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
