"""The frictions a new user hit in the first hour (issue 20), each reproduced:
relative paths in configs and cache keys, a cache written into the user's
image folder, a small folder trained at batch size 256 without a hint, a
sweep that needed a server, and the report's small inaccuracies."""

from __future__ import annotations

import pytest

from alexnet_pipeline.config import resolve_config
from tests.fixtures import make_image_folder


def test_an_epoch_of_few_optimizer_steps_is_announced_with_a_batch_size_that_gives_enough(
        tmp_path, run_main, capsys):
    """300 images at the default batch size of 256 are 2 steps an epoch:
    the command line says so before Prefect starts, with a batch size to pass."""
    from alexnet_pipeline.preflight import few_steps_warning

    cfg = resolve_config("default")
    assert few_steps_warning(cfg.train, 300) == (
        "300 training images at batch size 256 make 2 optimizer steps per epoch, too few to learn much; "
        "pass --batch-size 32 (10 steps; the default lr scales with it)")
    assert few_steps_warning(cfg.train, 2560) is None  # 10 steps
    assert "even batch size 1 makes only 5" in few_steps_warning(cfg.train, 5)

    # 3 classes x 10 images: 30 at batch size 16 is 2 steps; 2 (16 steps) would do.
    photos = make_image_folder(tmp_path / "photos", train_per_class=10, test_per_class=2)
    with pytest.raises(AssertionError, match="reached Prefect"):
        run_main(["--dataset", "imagefolder", "--data-dir", str(photos), "--weights", "none", "--device", "cpu",
                  "--batch-size", "16", "--image-size", "64", "--out", str(tmp_path / "run")])
    assert ("warning: 30 training images at batch size 16 make 2 optimizer steps per epoch, too few to learn much; "
            "pass --batch-size 2 (15 steps" in capsys.readouterr().err)


def test_the_default_cache_of_an_image_folder_is_the_pipelines_own(tmp_path, user_cache_dir):
    """Preprocessing an image folder writes nothing into it: the entry goes
    to $XDG_CACHE_HOME/alexnet-pipeline/preprocessed; --cache-dir still chooses."""
    from alexnet_pipeline.cache import preprocess

    photos = make_image_folder(tmp_path / "photos")
    data = resolve_config("default", overrides={"data.dataset": "imagefolder", "data.data_dir": str(photos)}).data
    entry = preprocess(data, 64, progress=False)
    assert entry.parent == user_cache_dir / "preprocessed"
    assert sorted(p.name for p in photos.iterdir()) == ["test", "train"]

    chosen = resolve_config("default", overrides={"data.dataset": "imagefolder", "data.data_dir": str(photos),
                                                   "data.cache_dir": str(tmp_path / "mine")}).data
    assert preprocess(chosen, 64, progress=False).parent == tmp_path / "mine"


def test_report_shows_the_lr_used_no_cifar_settings_for_images_and_csv_numbers_as_fractions(
        prefect_storage, tmp_path):
    """report.md's config block said "lr": null and listed CIFAR-10's URL and
    MD5 for an image-folder run; accuracy.csv held 0.41000000000000003 and
    absolute checkpoint paths (wrong once the run folder moved)."""
    import pandas as pd
    from prefect import flow

    from alexnet_pipeline.ownership import claim_sweep_folder
    from alexnet_pipeline.record import row_of
    from alexnet_pipeline.report import environment
    from tasks.report import write_report
    from tasks.sweep import write_sweep_report

    photos = make_image_folder(tmp_path / "photos")
    config = resolve_config("default", overrides={"data.dataset": "imagefolder", "data.data_dir": str(photos),
                                                   "model.weights": "none", "train.batch_size": 10}).to_dict()
    assert config["train"]["lr"] is None
    run_dir = tmp_path / "run"
    acc = 0.1 + 0.31  # 0.41000000000000003
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": acc, "lr": 7.5e-05, "epoch_seconds": 2.5,
                "images_per_s": 40.0, "checkpoint": str(run_dir / "checkpoints" / "alexnet-01.pt")}]
    evaluations = [{"loss": 0.9, "accuracy": acc, "per_class_accuracy": [0.5, 0.5], "confusion": [[1, 1], [1, 1]],
                    "num_images": 4}]
    measurements = {"stage_seconds": {"train": 1.0}, "peak_host_memory_gb": 1.0, "peak_gpu_memory_gb": None}
    sweep_dir = tmp_path / "sweep"
    claim_sweep_folder(sweep_dir)
    (sweep_dir / "trial-01").mkdir()
    rows = [{"trial": 1, "params": {"lr": acc}, "run_dir": str(sweep_dir / "trial-01"), "state": "Failed",
             "best_test_acc": acc, "error": "x"}]

    @flow
    def report_only():
        write_report.fn(run_dir=str(run_dir), rows=[row_of(history[0], {"test": evaluations[0]})],
                        best_result=evaluations[0], class_names=["a", "b"],
                        config=config, env=environment("cpu"), measurements=measurements, skipped_files=[])
        return write_sweep_report.fn(str(sweep_dir), rows, ["lr"], ["lr"])

    report_only()
    report = (run_dir / "report.md").read_text()
    assert '"lr": 1.171875e-05,' in report  # 3e-4 * 10 / 256, shown without binary leftovers
    assert "train.lr was not set: 1.17e-05 is the default for weights `none` at batch size 10" in report
    assert "cs.toronto.edu" not in report and '"md5"' not in report and '"verify"' not in report
    assert "accuracies as fractions of 1 (0.5 for 50.0%)" in report
    text = (run_dir / "accuracy.csv").read_text()
    assert "0.41000000000000003" not in text
    csv = pd.read_csv(run_dir / "accuracy.csv")
    assert csv["test_acc"].tolist() == [0.41] and csv["checkpoint"].tolist() == ["checkpoints/alexnet-01.pt"]
    sweep_csv = (sweep_dir / "sweep.csv").read_text()
    assert "0.41000000000000003" not in sweep_csv and ",0.41," in sweep_csv


def test_a_run_trained_with_relative_paths_evaluates_from_any_working_folder_and_when_moved(
        run_main, prefect_storage, tmp_path, cifar_data_dir, monkeypatch):
    """`python flows/evaluate.py main/runs/<run>` from the folder above the
    clone failed: the run's config held data_dir "data", the download task
    was a cache hit keyed on that text, and the data were looked for in
    ./data of the new working folder. Paths are absolute before they reach
    a config or a cache key, and a moved run folder still evaluates."""
    import shutil

    import pandas as pd

    from alexnet_pipeline.checkpoint import load_checkpoint

    assert cifar_data_dir == tmp_path / "data"  # run_main works in tmp_path: "data" is this folder
    code, err = run_main(["--data-dir", "data", "--no-verify", "--weights", "none", "--epochs", "1", "--batch-size", "10",
                          "--image-size", "64", "--device", "cpu", "--subset", "50", "--out", "clone/runs/r"],
                         prefect=True)
    assert code == 0, err[-3000:]
    run = tmp_path / "clone" / "runs" / "r"
    config = load_checkpoint(run / "checkpoints" / "alexnet-01.pt")["config"]
    assert (config["data"]["data_dir"], config["out"]) == (str(cifar_data_dir), str(run))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err = run_main(["../clone/runs/r"], command="evaluate", prefect=True)
    assert code == 0, err[-3000:]
    assert list(elsewhere.iterdir()) == []  # nothing looked for, or downloaded, here

    moved = tmp_path / "moved"
    shutil.move(run, moved)
    (moved / "accuracy.csv").unlink()
    code, err = run_main([str(moved)], command="evaluate", prefect=True)
    assert code == 0, err[-3000:]
    assert pd.read_csv(moved / "accuracy.csv")["checkpoint"].tolist() == ["checkpoints/alexnet-01.pt"]
    assert "(`checkpoints/alexnet-01.pt`)" in (moved / "report.md").read_text()


def test_a_sweep_without_a_server_runs_its_trials_here_one_after_another_and_resumes(prefect_storage, tmp_path):
    """A sweep needed a server, a work pool, the deployments and a worker,
    even for 2 seeds on one machine. Without one (deployment None, what
    `python flows/sweep.py` picks when PREFECT_API_URL is unset) each trial
    is a subflow run of full_run here: the same trial folders and sweep.csv,
    and the same sweep again reuses the finished trials."""
    import pandas as pd
    from prefect.client.orchestration import get_client

    from flows.sweep import sweep

    photos = make_image_folder(tmp_path / "photos")
    base = {"dataset": "imagefolder", "data_dir": str(photos), "weights": "none", "epochs": 1, "batch_size": 9,
            "image_size": 64, "device": "cpu"}
    out = tmp_path / "sweep"
    state = sweep(grid={"seed": [0, 1]}, base=base, out=str(out), deployment=None, return_state=True)
    assert state.is_completed(), state.message
    table = pd.read_csv(out / "sweep.csv")
    assert table["state"].tolist() == ["Completed", "Completed"] and table["seed"].tolist() == [0, 1]
    assert table["run_dir"].tolist() == [str(out / "trial-01"), str(out / "trial-02")]
    assert all((out / f"trial-0{i}" / "report.md").is_file() for i in (1, 2))
    with get_client(sync_client=True) as client:
        trial_runs = [client.read_flow_run(run_id) for run_id in table["flow_run_id"]]
        parents = {client.read_task_run(r.parent_task_run_id).flow_run_id for r in trial_runs}
    assert parents == {state.state_details.flow_run_id}  # each trial a subflow run of this sweep
    assert [r.name.rsplit("-", 2)[1:] for r in trial_runs] == [["trial", "01"], ["trial", "02"]]

    again = sweep(grid={"seed": [0, 1]}, base=base, out=str(out), deployment=None)
    assert [row["best_test_acc"] for row in again["trials"]] == table["best_test_acc"].tolist()
    # Trained once: the second sweep's trials are cache hits (their recorded epoch times unchanged).
    assert [row["train_seconds"] for row in again["trials"]] == table["train_seconds"].tolist()


def test_the_sweep_command_without_a_server_runs_here_instead_of_asking_for_one(run_main):
    """Without PREFECT_API_URL the command line went no further than "set
    PREFECT_API_URL": now it goes on to Prefect (the temporary server), and
    only a --deployment, which needs a server's workers, is refused."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code, err = run_main(["--grid", "seed=0,1", "--deployment", "full-run/on-demand"], command="sweep")
        assert code == 2 and "error: --deployment full-run/on-demand: a deployment runs on a Prefect server's workers" in err
        with pytest.raises(AssertionError, match="reached Prefect"):
            run_main(["--grid", "seed=0,1"], command="sweep")
