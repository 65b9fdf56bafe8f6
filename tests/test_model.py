"""Model: torchvision's AlexNet, weights from a torchvision-format file (loaded
with weights_only=True) or random, the head replaced for our classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet_pipeline.errors import WeightsError
from alexnet_pipeline.model import HEAD_KEY, build_alexnet


def test_random_init_has_the_right_head_and_runs_at_the_smallest_size():
    torch.manual_seed(0)
    model = build_alexnet(7, "none").eval()
    head = model.classifier[6]
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (4096, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 63, 63)).shape == (2, 7)


def test_weights_file_is_loaded_and_only_the_head_replaced(fake_weights):
    source = torch.load(fake_weights, weights_only=True)
    model = build_alexnet(10, str(fake_weights))
    state = model.state_dict()
    for key, value in source.items():
        if key.startswith("classifier.6."):
            continue
        assert torch.equal(state[key], value), key
    assert state[HEAD_KEY].shape == (10, 4096) and source[HEAD_KEY].shape == (1000, 4096)
    # With as many classes as the file has, even the head is the file's.
    same = build_alexnet(1000, str(fake_weights)).state_dict()
    assert torch.equal(same[HEAD_KEY], source[HEAD_KEY])


def test_weights_from_one_of_our_checkpoints_are_accepted(fake_weights, tmp_path):
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"format": "alexnet-pipeline-checkpoint/1", "model": torch.load(fake_weights, weights_only=True)}, wrapped)
    model = build_alexnet(5, str(wrapped))
    assert torch.equal(model.features[0].weight, torch.load(fake_weights, weights_only=True)["features.0.weight"])


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def test_weights_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(WeightsError, match="refusing to load") as err:
        build_alexnet(10, str(evil))
    assert "posix.mkdir" in str(err.value) or "os.mkdir" in str(err.value)  # names the culprit
    assert "torch.save(model.state_dict(), path)" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conv.weight": torch.zeros(3)}, "not a torchvision AlexNet state_dict"),
        ({HEAD_KEY: torch.zeros(10, 4096)}, "do not fit torchvision's AlexNet"),
        ([torch.zeros(3)], "not a state_dict"),
    ],
)
def test_foreign_weights_are_refused(content, message, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        build_alexnet(10, str(path))


def test_missing_or_unreadable_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        build_alexnet(10, str(tmp_path / "missing.pth"))
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_alexnet(10, str(tmp_path / "text.pth"))


def test_shape_mismatch_names_the_layer(fake_weights, tmp_path):
    state = torch.load(fake_weights, weights_only=True)
    state["features.0.weight"] = torch.zeros(32, 3, 11, 11)
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="features.0.weight"):
        build_alexnet(10, str(path))


def test_imagenet_weights_come_from_torchs_hub_cache(fake_weights, tmp_path, monkeypatch):
    """--weights imagenet goes through torchvision's normal cache: a file
    already there is used without any network."""
    import shutil
    import urllib.request

    from alexnet_pipeline.model import imagenet_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = imagenet_weights_file()
    assert cached.parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    assert cached.name == "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(fake_weights, cached)

    def no_network(*args, **kwargs):
        raise AssertionError("the cached weights should have been used without the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)  # torch.hub holds its own reference
    model = build_alexnet(10, "imagenet")
    source = torch.load(fake_weights, weights_only=True)
    assert torch.equal(model.state_dict()["features.0.weight"], source["features.0.weight"])
    assert model.classifier[6].out_features == 10


def test_imagenet_weights_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):  # what urllib raises without a network
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as err:
        build_alexnet(10, "imagenet")
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path / "torch-home" / "hub" / "checkpoints") in message
    assert "--weights PATH" in message and "--weights none" in message


def test_imagenet_weights_offline_are_reported_before_the_data_is_prepared(tmp_path, monkeypatch):
    """The CLI's preflight: offline and not in torch's cache, the run stops in
    seconds instead of after download and preprocessing."""
    import socket

    from alexnet_pipeline.config import resolve_config
    from alexnet_pipeline.preflight import check_inputs

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise OSError(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", offline)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")  # the data is there
    cfg = resolve_config("default", overrides={"data.data_dir": str(tmp_path)})
    with pytest.raises(WeightsError) as err:
        check_inputs(cfg)
    assert "Temporary failure in name resolution" in str(err.value) and "--weights none" in str(err.value)
    # Once the file is in torch's cache, no network is needed.
    from alexnet_pipeline.model import imagenet_weights_file

    imagenet_weights_file().parent.mkdir(parents=True)
    imagenet_weights_file().write_bytes(b"cached")
    check_inputs(cfg)
