"""Export: the ONNX file (preprocessing in the graph) agrees with PyTorch
under onnxruntime, the safetensors weights load into torchvision's AlexNet
with the new head, and both carry what is needed to use them."""

from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

from tests.fixtures import trained_image_folder_run

CLASSES = ("cat", "dog", "ship")


def need(module: str):
    """The `export` extra's package (the `test` extra pulls it in): skipped
    without it, but under CI (which installs it) its absence fails."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason='the export extra is not installed (pip install -e ".[test]")')


@pytest.fixture(scope="module")
def trained(module_tmp):
    return trained_image_folder_run(module_tmp("export"), CLASSES)


def test_onnx_export_matches_pytorch_on_the_runs_test_images(trained, tmp_path, capsys):
    onnx, onnxruntime = need("onnx"), need("onnxruntime")
    need("onnxscript")

    from flows.export import main

    out = tmp_path / "model.onnx"
    assert main([str(trained["run_dir"]), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agree on the top-1 class of 15 of 15" in printed and "largest logit difference" in printed
    described = json.loads((tmp_path / "model.onnx.json").read_text())
    assert described["class_names"] == list(CLASSES) and (described["stored_size"], described["image_size"]) == (40, 64)
    assert described["check"]["same_top1"] == described["check"]["num_images"] == 15
    assert described["check"]["max_logit_difference"] < 1e-3
    # Self-contained: the weights are in the file, the metadata too.
    assert not list(tmp_path.glob("*.data"))
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == list(CLASSES) and "resize to 64x64" in props["preprocessing"]
    # Any batch size; raw uint8 images at the stored size in, logits out.
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": np.zeros((3, 40, 40, 3), dtype=np.uint8)})[0]
    assert logits.shape == (3, 3)


def test_safetensors_weights_load_into_torchvision_alexnet(trained, tmp_path, capsys):
    need("safetensors")
    import torch
    from safetensors.torch import load_file
    from torchvision.models import alexnet

    from alexnet_pipeline.checkpoint import load_checkpoint
    from flows.export import main

    out = tmp_path / "model.safetensors"
    assert main([str(trained["run_dir"]), "--epoch", "1", "--format", "safetensors", "--out", str(out),
                 "--check-images", str(trained["data"] / "test")]) == 0
    assert "agree on the top-1 class of 15 of 15" in capsys.readouterr().out
    model = alexnet(weights=None, num_classes=len(CLASSES))
    model.load_state_dict(load_file(str(out)))  # strict: every name and shape fits
    ckpt = load_checkpoint(trained["run_dir"] / "checkpoints" / "alexnet-01.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    assert json.loads((tmp_path / "model.safetensors.json").read_text())["epoch"] == 1


def test_export_refusals_are_one_error_line(trained, tmp_path, capsys):
    from flows.export import main

    assert main([str(tmp_path / "nowhere"), "--format", "onnx"]) == 1
    assert main([str(trained["run_dir"]), "--check-images", str(tmp_path)]) == 1  # an empty folder
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "does not exist" in lines[0] and "no files in" in lines[1], err
    assert "Traceback" not in err
