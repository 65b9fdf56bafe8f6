"""A checkpoint as a self-contained model file for use outside this pipeline,
checked against PyTorch before it is called done.

    from alexnet_pipeline.export import export_onnx, export_safetensors
    meta = export_onnx("runs/x/checkpoints/alexnet-07.pt", "alexnet.onnx", check_images)

- ONNX: one file (weights inside) whose graph takes the images as the
  pipeline stores them, uint8 RGB (batch, S, S, 3) at the checkpoint's stored
  size, and does the rest of the preprocessing itself (resize to the model's
  input, normalisation); output: logits (batch, classes). The metadata is in
  the file's metadata_props and in a JSON file beside it (NAME.onnx.json).
- safetensors: the weights under torchvision's names, for
  `torchvision.models.alexnet(num_classes=N).load_state_dict(...)`; no pickle.
  Its input is the normalised float32 (batch, 3, size, size) image; the
  header's metadata and the JSON file say how to make it.

The packages (onnx, onnxruntime, onnxscript, safetensors) are the optional
extra `export`: pip install -e ".[export]".
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from alexnet_pipeline.checkpoint import load_checkpoint
from alexnet_pipeline.errors import PipelineError
from alexnet_pipeline.evaluate import batch_logits, prepared_model
from alexnet_pipeline.files import atomic_path, atomic_write_text
from alexnet_pipeline.integrity import sha256_file
from alexnet_pipeline.predict import checkpoint_preprocessing, preprocessed_entry

log = logging.getLogger(__name__)

FORMATS = ("onnx", "safetensors")
ONNX_OPSET = 18  # Resize with antialias (shrinking inputs) needs 18
CHECK_BATCH = 64
# The largest logit difference between ONNX Runtime and PyTorch accepted
# (float32 on both sides; measured differences are around 1e-5).
ONNX_TOLERANCE = 1e-3


class ExportError(PipelineError):
    pass


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"exporting needs the package {module.split('.')[0]}, which is not installed; "
                          'pip install -e ".[export]"') from None


class ModelWithPreprocessing(torch.nn.Module):
    """uint8 NHWC images at the stored size in, logits out: the evaluation's
    BatchTransform and model in one graph."""

    def __init__(self, model: torch.nn.Module, transform):
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(images))


def export_metadata(checkpoint: str | Path, ckpt: dict, fmt: str) -> dict:
    pre = checkpoint_preprocessing(ckpt, checkpoint)
    if fmt == "onnx":
        model_input = (f"images: uint8 [batch, {pre.stored_size}, {pre.stored_size}, 3], RGB, decoded and "
                       f"centre-cropped to {pre.stored_size}x{pre.stored_size}; the graph resizes and normalises")
    else:
        model_input = (f"float32 [batch, 3, {pre.image_size}, {pre.image_size}], made as `preprocessing` says")
    return {
        "format": fmt,
        "source_checkpoint": str(checkpoint),
        "source_sha256": sha256_file(Path(checkpoint)),
        "epoch": int(ckpt["epoch"]),
        "class_names": list(ckpt["class_names"]),
        "image_size": pre.image_size,
        "stored_size": pre.stored_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input": model_input,
        "output": f"logits [batch, {len(ckpt['class_names'])}] in class_names' order; softmax gives probabilities",
        "preprocessing": pre.in_words(),
        "architecture": f"torchvision.models.alexnet(num_classes={len(ckpt['class_names'])})",
        "torch_version": str(torch.__version__),
    }


def export_onnx(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the ONNX file (weights inside, metadata in metadata_props);
    return the metadata."""
    onnx = _require("onnx")
    _require("onnxscript")  # torch.onnx's exporter needs it
    ckpt = load_checkpoint(checkpoint)
    meta = export_metadata(checkpoint, ckpt, "onnx")
    model, transform = prepared_model(ckpt, torch.device("cpu"), source=checkpoint)
    wrapped = ModelWithPreprocessing(model, transform).eval()
    example = torch.zeros((2, meta["stored_size"], meta["stored_size"], 3), dtype=torch.uint8)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.onnx.export(wrapped, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=ONNX_OPSET,
                          dynamo=True, external_data=False, verbose=False)
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(proto, str(tmp))
    return meta


def export_safetensors(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the weights under torchvision's AlexNet names, the metadata in
    the header (as JSON strings); return the metadata."""
    safetensors_torch = _require("safetensors.torch")
    ckpt = load_checkpoint(checkpoint)
    meta = export_metadata(checkpoint, ckpt, "safetensors")
    state = {name: tensor.detach().contiguous() for name, tensor in ckpt["model"].items()}
    with atomic_path(Path(out)) as tmp:
        safetensors_torch.save_file(state, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v)
                                                               for k, v in meta.items()})
    return meta


def write_metadata(out: str | Path, meta: dict, check: ParityCheck | None) -> Path:
    """The metadata beside the model file (model.onnx -> model.onnx.json)."""
    path = Path(out).with_name(Path(out).name + ".json")
    atomic_write_text(path, json.dumps({**meta, "check": asdict(check) if check else None}, indent=2) + "\n")
    return path


@dataclass
class ParityCheck:
    """The exported file against the checkpoint, on the same images."""

    against: str
    num_images: int
    same_top1: int
    max_logit_difference: float

    @property
    def passed(self) -> bool:
        return self.same_top1 == self.num_images and self.max_logit_difference <= ONNX_TOLERANCE


def _reference_logits(checkpoint: str | Path, images: np.ndarray) -> np.ndarray:
    """The checkpoint's logits by the evaluation's own forward pass (CPU, float32)."""
    model, transform = prepared_model(load_checkpoint(checkpoint), torch.device("cpu"), source=checkpoint)
    with torch.no_grad():
        return np.concatenate([batch_logits(model, torch.from_numpy(images[i:i + CHECK_BATCH]), transform).numpy()
                               for i in range(0, len(images), CHECK_BATCH)])


def _compare(against: str, reference: np.ndarray, exported: np.ndarray) -> ParityCheck:
    return ParityCheck(against, len(reference), int((reference.argmax(1) == exported.argmax(1)).sum()),
                       float(np.abs(reference - exported).max()) if len(reference) else 0.0)


def check_onnx(onnx_path: str | Path, checkpoint: str | Path, images: np.ndarray) -> ParityCheck:
    """ONNX Runtime (CPU) on `images` (uint8 NHWC at the stored size) against
    the checkpoint in PyTorch."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    exported = np.concatenate([session.run(["logits"], {"images": images[i:i + CHECK_BATCH]})[0]
                               for i in range(0, len(images), CHECK_BATCH)])
    return _compare("onnxruntime " + ort.__version__, _reference_logits(checkpoint, images), exported)


def check_safetensors(path: str | Path, checkpoint: str | Path, images: np.ndarray) -> ParityCheck:
    """The weights loaded into a plain torchvision AlexNet with the new head
    (strict load: every name and shape must fit), fed by the preprocessing
    the metadata describes, against the checkpoint."""
    from safetensors import safe_open
    from torchvision.models import alexnet

    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) if v[:1] in "[{" else v for k, v in f.metadata().items()}
        state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no items()
    model = alexnet(weights=None, num_classes=len(meta["class_names"]))
    model.load_state_dict(state)
    model.eval()
    size = int(meta["image_size"])
    mean = torch.tensor([float(v) for v in meta["mean"]]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in meta["std"]]).view(1, 3, 1, 1)
    outputs = []
    with torch.no_grad():
        for i in range(0, len(images), CHECK_BATCH):
            x = torch.from_numpy(images[i:i + CHECK_BATCH]).permute(0, 3, 1, 2).float() / 255.0
            x = (x - mean) / std
            if x.shape[-1] != size:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                    antialias=x.shape[-1] > size)
            outputs.append(model(x).numpy())
    exported = np.concatenate(outputs) if outputs else np.zeros((0, len(meta["class_names"])))
    return _compare("torchvision.models.alexnet", _reference_logits(checkpoint, images), exported)


def check_images(checkpoint: str | Path, files: list[Path] | None, count: int) -> tuple[np.ndarray, str]:
    """Up to `count` images to check an export on, as the model's uint8
    input, and where they came from: the first of `files` decoded as predict
    decodes them (undecodable ones left out), else `count` of the run's own
    test images from its preprocess cache."""
    from alexnet_pipeline.cache import load_arrays
    from alexnet_pipeline.data import decode_image

    ckpt = load_checkpoint(checkpoint)
    size = checkpoint_preprocessing(ckpt, checkpoint).stored_size
    if files:
        images = []
        for path in files:
            if len(images) == count:
                break
            try:
                images.append(decode_image(path, size))
            except Exception:  # noqa: BLE001 - a bad file is simply not used for the check
                continue
        if not images:
            raise ExportError("none of the --check-images files could be decoded; give image files")
        return np.stack(images), f"{len(images)} images from --check-images"
    entry = preprocessed_entry(ckpt)
    if entry is None:
        raise ExportError(f"the test set {checkpoint} was trained on is not in the preprocess cache on this machine "
                          "(where its config says); pass --check-images with image files or folders to check the "
                          "export on")
    test = load_arrays(entry).test_images
    # Evenly spaced: the test set is stored class by class, and the first
    # `count` could all be one class.
    chosen = np.unique(np.linspace(0, len(test) - 1, min(count, len(test))).astype(int))
    return np.array(test[chosen]), f"{len(chosen)} test images (evenly spaced) of {entry}"
