"""torchvision's AlexNet with a new last layer; pretrained, loaded or random.

    from alexnet_pipeline.model import build_alexnet
    model = build_alexnet(num_classes=10, weights="imagenet")  # or "none", or a path

Every load uses torch.load(weights_only=True): a weights file that would run
code when unpickled is refused.
"""

from __future__ import annotations

import logging
import pickle
import urllib.error
from pathlib import Path

import torch
from torch import nn

from alexnet_pipeline.errors import WeightsError
from alexnet_pipeline.files import open_regular_file

log = logging.getLogger(__name__)

# ImageNet statistics: the pretrained weights expect inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_KEY = "classifier.6.weight"
# AlexNet's weights take 233 MB as float32 (466 MB as float64): a larger
# --weights file is not AlexNet's, and is refused before it is read.
MAX_WEIGHTS_BYTES = 1 << 30


def new_alexnet(num_classes: int) -> nn.Module:
    from torchvision.models import alexnet

    return alexnet(weights=None, num_classes=num_classes)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    old = model.classifier[6]
    if old.out_features != num_classes:
        model.classifier[6] = nn.Linear(old.in_features, num_classes)
    return model


def imagenet_weights_file() -> Path:
    """Where torchvision keeps IMAGENET1K_V1 (the torch hub cache)."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def check_imagenet_weights_reachable(timeout: float = 5.0) -> None:
    """Offline and not in torch's hub cache: say so in seconds, before the
    data is prepared, rather than when training starts."""
    import socket
    import urllib.parse

    from torchvision.models import AlexNet_Weights

    if imagenet_weights_file().is_file():
        return
    url = AlexNet_Weights.IMAGENET1K_V1.url
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
    except OSError as exc:
        raise WeightsError(
            f"could not reach {parts.hostname} for torchvision's ImageNet AlexNet weights "
            f"({exc.strerror or exc}) and they are not in torch's cache. Offline? Copy "
            f"{url.rsplit('/', 1)[-1]} to {imagenet_weights_file()}, or pass --weights PATH "
            "(a torchvision-format state_dict) or --weights none (random init)."
        ) from None


def load_imagenet_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import AlexNet_Weights

    try:
        # torchvision's loader goes through torch.hub's cache, downloading (with
        # its SHA-256 prefix check) only when the file is not there yet.
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"could not get torchvision's ImageNet AlexNet weights ({reason}). Offline? Copy "
            f"{AlexNet_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} to {imagenet_weights_file()}, "
            "or pass --weights PATH (a torchvision-format state_dict) or --weights none (random init)."
        ) from None
    except RuntimeError as exc:
        raise WeightsError(
            f"torchvision's ImageNet AlexNet weights in {imagenet_weights_file()} are damaged ({exc}); "
            "delete the file to download it again"
        ) from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    try:
        weights_file = open_regular_file(path, "--weights", WeightsError, MAX_WEIGHTS_BYTES)
    except FileNotFoundError:
        raise WeightsError(
            f"--weights {path}: no such file; give a torchvision-format AlexNet state_dict, 'imagenet' or 'none'"
        ) from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path} ({exc.strerror})") from None
    try:
        with weights_file:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names a blocked object as "GLOBAL module.name"; any other
        # unpickling failure means the file is not a torch.save file at all.
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if not blocked:
            raise WeightsError(f"cannot read weights file {path} (not a torch.save file); is it a torch.save file?") from None
        raise WeightsError(
            f"refusing to load {path}: it holds objects other than tensors, which could run code "
            f"when unpickled ({blocked[0]}). Save it with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        raise WeightsError(f"cannot read weights file {path} ({type(exc).__name__}: {exc}); is it a torch.save file?") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of this pipeline's own checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{path} is not a state_dict (a mapping of parameter names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state


def check_weight_values(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse, naming the file and the tensor, weights that would load but
    not train: integer or boolean tensors (torch would cast them silently),
    NaN or infinite values (the loss becomes nan some steps later, far from
    the cause), a last layer that is not a (classes, 4096) matrix."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise WeightsError(
                f"weights {source}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')}, not floating "
                "point; these are not trained weights (quantized or converted?): save the float32 state_dict"
            )
        # A NaN or inf makes the sum NaN or inf: one pass and no boolean copy
        # of 61M values (float64: no finite weights overflow it); the count only then.
        if torch.isfinite(tensor.sum(dtype=torch.float64)):
            continue
        bad = int(tensor.numel() - torch.isfinite(tensor).sum())
        if bad:
            raise WeightsError(
                f"weights {source}: tensor {name!r} holds {bad:,} NaN or infinite value(s) of {tensor.numel():,}; "
                "the file is damaged or was saved from a run that diverged"
            )
    head = state[HEAD_KEY]
    if head.dim() != 2 or head.shape[1] != 4096 or head.shape[0] < 1:
        raise WeightsError(
            f"weights {source}: tensor {HEAD_KEY!r} has shape {tuple(head.shape)}, expected (classes, 4096); "
            "this is not a torchvision AlexNet state_dict"
        )


def build_alexnet(num_classes: int, weights: str = "imagenet") -> nn.Module:
    """AlexNet whose last layer is Linear(4096, num_classes)."""
    if weights == "none":
        return new_alexnet(num_classes)
    state = load_imagenet_state_dict() if weights == "imagenet" else load_state_dict_file(weights)
    if HEAD_KEY not in state:
        raise WeightsError(f"weights {weights}: no {HEAD_KEY!r}; this is not a torchvision AlexNet state_dict")
    check_weight_values(state, weights)
    model = new_alexnet(int(state[HEAD_KEY].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise WeightsError(f"weights {weights} do not fit torchvision's AlexNet: {detail}") from None
    return replace_head(model, num_classes)
