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
