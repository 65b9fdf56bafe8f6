"""The throughput benchmark runs end to end on the CPU and reports (never a
timing assertion: numbers on a shared 2-core machine mean nothing)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def speedup_fits_rounded_rates(speedup: float, pipeline: float, seed: float, rate_step: float = 0.1,
                               speedup_step: float = 0.01) -> bool:
    """Whether speedup (rounded to speedup_step) can be pipeline / seed for
    rates that round to the given ones (to rate_step)."""
    half, eps = rate_step / 2, 1e-9
    lowest = (pipeline - half) / (seed + half)
    highest = (pipeline + half) / (seed - half) if seed > half else float("inf")
    return lowest - speedup_step / 2 - eps <= speedup <= highest + speedup_step / 2 + eps


def test_the_speedup_check_allows_for_rounding_only():
    assert speedup_fits_rounded_rates(0.92, 1.4, 1.5)  # the reported failure's kind: slow rates, coarse rounding
    assert speedup_fits_rounded_rates(0.91, 20.1, 22.1)
    assert not speedup_fits_rounded_rates(0.95, 20.1, 22.1)  # 20.15 / 22.05 = 0.914 at most
    assert not speedup_fits_rounded_rates(2.0, 20.1, 22.1)  # a wrong formula (seed / pipeline, say)


def test_throughput_quick_reports_all_fields():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["device"] == "cpu"
    for key in ("seed_img_per_s", "pipeline_img_per_s", "streamed_img_per_s", "streamed_photo_img_per_s",
                "eval_img_per_s", "checkpoint_eval_seconds", "checkpoint_eval_in_memory_seconds"):
        assert result[key] > 0, key
    # speedup is computed from the unrounded rates and rounded to 0.01; the rates
    # are rounded to 0.1 img/s, which on a busy CPU (a few img/s) moves their
    # ratio by several percent (0.92 against 0.907 once). So the check is that
    # some pair of true rates within the rounding gives the reported speedup,
    # whatever the machine's speed.
    assert speedup_fits_rounded_rates(result["speedup"], result["pipeline_img_per_s"], result["seed_img_per_s"])
    assert result["peak_gpu_mem_gb"] is None and result["eval_peak_gpu_mem_gb"] is None
    # The table precedes the JSON line and names both recipes.
    table = "\n".join(lines[:-1])
    assert "seed recipe (tutorial)" in table and "pipeline, train" in table


def test_checkpoint_stall_quick_reports_the_writer_line_and_the_old_hand_over():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "checkpoint_stall.py"), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["epochs"] == 2 and len(result["epoch_seconds"]) == 2
    assert result["old_handover_seconds"] > 0 and result["train_run_seconds"] > 0
    assert "checkpoint writer: 2 epochs, " in proc.stdout  # the run log's line, from train_run itself


def test_image_folder_packed_as_the_official_cifar_archive(tmp_path):
    """benchmarks/cifar_archive_from_folder.py (used on the GPU machine, which
    cannot download CIFAR-10) writes an archive the download stage accepts,
    holding exactly the folder's pixels and labels in CIFAR-10's class order."""
    from PIL import Image

    from alexnet_pipeline.data import load_cifar10_arrays
    from alexnet_pipeline.download import ensure_cifar10
    from tests.fixtures import CLASS_NAMES, make_image_folder

    folder = make_image_folder(tmp_path / "jpeg", classes=tuple(sorted(CLASS_NAMES)), train_per_class=3,
                               test_per_class=2, size=32)
    data_dir = tmp_path / "data"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cifar_archive_from_folder.py"), str(folder),
                           str(data_dir)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    arrays = load_cifar10_arrays(ensure_cifar10(data_dir, verify=False, progress=False))
    assert arrays.class_names == CLASS_NAMES
    assert arrays.train_images.shape == (30, 32, 32, 3) and arrays.test_images.shape == (20, 32, 32, 3)
    for images, labels, split in ((arrays.train_images, arrays.train_labels, "train"),
                                  (arrays.test_images, arrays.test_labels, "test")):
        for image, label in zip(images, labels):
            matches = [np.array_equal(image, np.asarray(Image.open(p).convert("RGB")))
                       for p in (folder / split / CLASS_NAMES[label]).iterdir()]
            assert sum(matches) == 1  # each stored image is one file of its own class


@pytest.mark.slow
def test_overhead_quick_reports_all_fields():
    """benchmarks/overhead.py with small counts: it runs every measurement
    (floor, a finished run again, a new lr, trials) and the re-run was all
    cache hits (the script refuses otherwise). Its numbers are not asserted."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--quick"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("floor_s", "first_run_s", "cached_rerun_s", "cached_over_floor", "new_lr_until_training_s",
                "new_lr_total_s", "overhead_per_further_trial_s", "peak_host_memory_gb"):
        assert result[key] > 0, key
    assert result["new_lr_preprocess_stage_s"] is not None and len(result["trial_overheads_s"]) == 2
