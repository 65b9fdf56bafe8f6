"""Typed, strict configuration: presets, YAML files and command-line overrides.

Precedence, lowest first: the dataclass defaults (the default recipe), a preset
(``alexnet_pipeline/presets/NAME.yaml``), a ``--config`` YAML file, then flags.
Every value is checked before any work starts; an error names the field.

    from alexnet_pipeline.config import resolve_config
    cfg = resolve_config(preset="smoke", overrides={"train.epochs": 3})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alexnet_pipeline.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# Replaces ./runs as the parent of default run folders: point it at a
# filesystem every worker mounts, so a run written on one GPU host can be read
# (evaluated, compared in a sweep) from another.
RUNS_ROOT_ENV = "ALEXNET_PIPELINE_RUNS_ROOT"
# Where the data sits, how it is fetched, checked and decoded do not change
# results (the data's own content key does): left out of the fingerprint, so
# `--no-verify` on the same archive resumes the same run folder (and out of
# what a refusal to resume reports as different).
RESULT_NEUTRAL_DATA_FIELDS = ("data_dir", "cache_dir", "decode_workers", "url", "verify", "md5")
# Smallest input for which AlexNet's three max-pools still see a 3x3 map.
MIN_ALEXNET_IMAGE_SIZE = 63
# Bounds on a YAML file, checked before it is turned into objects: a config is
# a few hundred bytes two levels deep, and anchors/aliases could otherwise make
# a 466-byte file expand to hundreds of MB (the "billion laughs").
MAX_CONFIG_BYTES = 256 << 10
MAX_YAML_DEPTH = 16
# One per node plus the characters of every scalar, each alias counted as a
# full copy of what it names.
MAX_YAML_EXPANDED = 1_000_000
# Plain sanity bounds: far beyond any real run, small enough that nothing
# downstream (folder names, step counts, JSON parameters) overflows.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_DECODE_WORKERS = 1024
# torch.manual_seed takes at most 64 bits; epoch_seed() keeps seeds below 2**63.
MAX_SEED = 2**63 - 1
SECTIONS = ("data", "model", "train")


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "imagefolder"] = "cifar10"
    data_dir: str = "data"
    # Check the CIFAR-10 archive's MD5; false accepts a modified copy.
    verify: bool = True
    # At most this many train and this many test images, equal per class.
    subset: int | None = None
    # Side of the square uint8 images kept in the cache (image folders only);
    # None: the image size, or the images' own size when that is smaller.
    stored_size: int | None = None
    # Where preprocessed arrays are cached; None: <data_dir>/preprocessed.
    cache_dir: str | None = None
    skip_bad_images: bool = False
    url: str = CIFAR10_URL
    md5: str = CIFAR10_MD5
    # Threads that decode image-folder files; None: one per CPU.
    decode_workers: int | None = None


@dataclass
class ModelConfig:
    # "imagenet" (torchvision IMAGENET1K_V1), "none" (random init) or a path
    # to a torchvision-format state_dict.
    weights: str = "imagenet"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    # None: chosen from the weights (see resolved_lr), scaled with batch size.
    lr: float | None = None
    weight_decay: float = 0.05
    schedule: Literal["constant", "warmup_cosine", "onecycle"] = "warmup_cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    # Random crop (from a reflect-padded image) and horizontal flip.
    augment: bool = True
    crop_padding: int = 4
    image_size: int = 224
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = 1000

    def resolved_lr(self, weights: str) -> float:
        if self.lr is not None:
            return self.lr
        # Fine-tuning pretrained features wants a smaller step than training
        # from scratch; both are per 256 images and scale linearly.
        base = 3e-4 if weights == "none" else 1e-4
        return base * self.batch_size / 256


@dataclass
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Run folder; None: <runs root>/<name derived from the config> (see runs_root).
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes results; the run folder follows from it."""
        d = self.to_dict()
        d.pop("out")
        for key in RESULT_NEUTRAL_DATA_FIELDS:
            d["data"].pop(key)
        # A weights file counts by its content: the same path holding other
        # weights is another run, not a cache hit.
        weights = Path(self.model.weights).expanduser()
        if self.model.weights not in ("imagenet", "none") and weights.is_file():
            from alexnet_pipeline.integrity import sha256_file

            d["model"]["weights_sha256"] = sha256_file(weights)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def run_dir(self, dataset_key: str | None = None) -> Path:
        """`out`, or a folder named after the config and, when given, the
        preprocessed data's content key: the same command on the same data
        always lands in the same folder (which is how a re-run resumes)."""
        if self.out:
            return Path(self.out).expanduser()
        weights = self.model.weights if self.model.weights in ("imagenet", "none") else "custom"
        name = f"{self.data.dataset}-{weights}-e{self.train.epochs}-{self.fingerprint()}"
        return runs_root() / (f"{name}-{dataset_key[:6]}" if dataset_key else name)


def runs_root() -> Path:
    """Parent of the default run folders: $ALEXNET_PIPELINE_RUNS_ROOT, else ./runs."""
    return Path(os.environ.get(RUNS_ROOT_ENV) or "runs").expanduser()


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60
_short_repr.maxlong = 40
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxset = _short_repr.maxdict = 4
_short_repr.maxlevel = 2


def shown(value: Any) -> str:
    """repr() cut to a line: an error message never echoes a whole (maybe
    huge) value from a config file back at the user."""
    return _short_repr.repr(value)


def _check_type(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{name}: {shown(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, name)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{name}: {shown(value)} is out of range (a 64-bit integer)")
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string: take it as the number meant.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}")
        try:
            value = float(value)  # an integer beyond a double's range raises here
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {shown(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {shown(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A path given on the command line with bytes that are not UTF-8
            # (Python keeps them as lone surrogates): it could not be recorded
            # in checkpoints, reports or Prefect's parameters.
            raise ConfigError(
                f"{name}: {value.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')} "
                "is not valid UTF-8; rename it (or link it under a UTF-8 name) and pass that"
            ) from None
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {name}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        section = prefix.rstrip(".") or "config"
        raise ConfigError(
            f"{section}: expected a mapping of settings (like `{section}: {{key: value}}`), got {shown(values)}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    # Keys may be of any YAML type (1, null, a date): sort them as text.
    unknown = sorted(set(values) - known, key=repr)
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= 60 else shown(unknown[0])
        raise ConfigError(f"unknown config key {prefix}{key}; known keys here: {', '.join(sorted(known))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values[f.name], f"{name}.")
        else:
            kwargs[f.name] = _check_type(values[f.name], hints[f.name], name)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML
    silently keeps the last, so `epochs: 1` then `epochs: 5` would be 5)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {shown(key)} is given twice in this mapping", key_node.start_mark)
                seen.add(key)
            except TypeError:
                pass  # an unhashable key (a list): SafeLoader's own check refuses it, with its line
        return super().construct_mapping(node, deep=deep)


def _read_config_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # a bounded read: /dev/zero or a huge file is refused, not read
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES >> 10} KiB; a config is a few lines "
            "(sections data, model, train): check that this is the file you meant"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column {column}; "
            "save it as UTF-8"
        ) from None


def _check_yaml_size(text: str, path: Path) -> None:
    """Walk the parser's events (no objects built yet) and refuse nesting
    deeper than MAX_YAML_DEPTH or a document that, with its aliases
    expanded, is larger than MAX_YAML_EXPANDED. Both stop a hostile file
    before PyYAML's recursive composer or anything that prints or hashes
    the result (a MemoryError, a RecursionError, a 351 MB error line)."""
    open_nodes: list[list] = []  # [anchor, expanded size so far] of each open mapping/sequence
    anchored: dict[str, int] = {}  # anchor -> expanded size of the node it names
    closed = 0  # expanded size of finished top-level nodes
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{path}: nested more than {MAX_YAML_DEPTH} levels deep at line {event.start_mark.line + 1}; "
                    "a config has two (section: {key: value})"
                )
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = open_nodes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1 + len(event.value)
        elif isinstance(event, yaml.AliasEvent):
            # An alias to a node still open (recursive) counts as one node.
            anchor, size = None, anchored.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            anchored[anchor] = size
        if open_nodes:
            open_nodes[-1][1] += size
        else:
            closed += size
        if closed + sum(n[1] for n in open_nodes) > MAX_YAML_EXPANDED:
            raise ConfigError(
                f"{path}: the YAML expands to more than {MAX_YAML_EXPANDED:,} nodes and characters "
                f"(anchors and aliases, near line {event.start_mark.line + 1}); a config needs a few dozen: "
                "write the values out instead of repeating aliases"
            )


def load_yaml(path: Path) -> dict:
    """A config file as a dict of sections, each a dict (an empty section is
    {}). Size, nesting depth and alias expansion are bounded before any
    object is built; every problem is a ConfigError naming the file."""
    text = _read_config_text(Path(path))
    try:
        _check_yaml_size(text, path)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    except (ValueError, OverflowError) as exc:
        # Raised by PyYAML's constructors, not as YAMLError: a 5000-digit
        # integer (Python's int-conversion limit), a date like 2024-13-45.
        raise ConfigError(f"malformed YAML in {path}: a value cannot be read ({str(exc).split(';')[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train)")
    # `train:` with every line below commented out is an empty section, not null.
    return {key: {} if key in SECTIONS and value is None else value for key, value in data.items()}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _utf8_path(path: Path) -> Path:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"--config {str(path).encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')}: "
            "the file name is not valid UTF-8; rename the file"
        ) from None
    return path


def _dotted_to_nested(overrides: dict[str, Any]) -> dict:
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def resolve_config(
    preset: str = "default",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Merge preset, file and dotted overrides ({"train.epochs": 3}); validate."""
    if preset not in preset_names():
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    layers = [(PRESET_DIR / f"{preset}.yaml", load_yaml(PRESET_DIR / f"{preset}.yaml"))]
    if config_file is not None:
        layers.append((config_file, load_yaml(_utf8_path(Path(config_file)))))
    if overrides:
        layers.append((None, _dotted_to_nested({k: v for k, v in overrides.items() if v is not None})))
    merged: dict = {}
    for source, values in layers:
        # Each layer is checked on its own: a malformed section or value in a
        # file is refused even when a flag sets the same field (merging first
        # would let `train: fast` and the preset's train settings silently
        # vanish under `--epochs 3`).
        try:
            _build(PipelineConfig, values, "")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {source})" if source is not None else str(exc)) from None
        merged = _merge(merged, values)
    cfg = _build(PipelineConfig, merged, "")
    validate(cfg)
    return cfg


def config_from_dict(values: dict) -> PipelineConfig:
    """Rebuild a config stored in a checkpoint or passed between tasks."""
    cfg = _build(PipelineConfig, values, "")
    validate(cfg)
    return cfg


def validate(cfg: PipelineConfig) -> None:
    t, d = cfg.train, cfg.data
    checks = [
        (t.epochs >= 1, "train.epochs", f"must be at least 1, got {t.epochs}"),
        (t.epochs <= MAX_EPOCHS, "train.epochs", f"{t.epochs} is more than this pipeline supports ({MAX_EPOCHS})"),
        (t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}"),
        (t.batch_size <= MAX_BATCH_SIZE, "train.batch_size",
         f"{t.batch_size} is more than this pipeline supports ({MAX_BATCH_SIZE})"),
        (t.eval_batch_size >= 1, "train.eval_batch_size", f"must be at least 1, got {t.eval_batch_size}"),
        (t.eval_batch_size <= MAX_BATCH_SIZE, "train.eval_batch_size",
         f"{t.eval_batch_size} is more than this pipeline supports ({MAX_BATCH_SIZE})"),
        (0 <= t.seed <= MAX_SEED, "train.seed", f"must be between 0 and 2**63-1 ({MAX_SEED}), got {t.seed}"),
        (t.lr is None or t.lr > 0, "train.lr", f"must be greater than 0, got {t.lr}"),
        (t.lr is None or t.lr < 10, "train.lr", f"{t.lr} is far too large for AdamW; try 1e-4"),
        (t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}"),
        # AdamW multiplies the weights by (1 - lr * weight_decay) every step.
        (t.weight_decay * t.resolved_lr(cfg.model.weights) < 1, "train.weight_decay",
         f"{t.weight_decay} times the lr ({t.resolved_lr(cfg.model.weights)}) is at least 1: every step would "
         "wipe out the weights; 0.05 is usual"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}"),
        (t.warmup_epochs >= 0, "train.warmup_epochs", f"must be >= 0, got {t.warmup_epochs}"),
        (t.warmup_epochs <= MAX_EPOCHS, "train.warmup_epochs",
         f"{t.warmup_epochs} is more than this pipeline supports ({MAX_EPOCHS})"),
        # Only warmup_cosine reads it; a warm-up past the last epoch never reaches the lr asked for.
        (t.schedule != "warmup_cosine" or t.warmup_epochs <= t.epochs, "train.warmup_epochs",
         f"{t.warmup_epochs} is longer than the training ({t.epochs} epochs); use at most {t.epochs}"),
        (t.crop_padding >= 0, "train.crop_padding", f"must be >= 0, got {t.crop_padding}"),
        (t.crop_padding <= 1024, "train.crop_padding", f"{t.crop_padding} is larger than any image here (1024)"),
        (
            t.image_size >= MIN_ALEXNET_IMAGE_SIZE,
            "train.image_size",
            f"{t.image_size} is too small for AlexNet; use at least {MIN_ALEXNET_IMAGE_SIZE} (224 is standard)",
        ),
        (t.image_size <= 1024, "train.image_size", f"{t.image_size} is larger than this pipeline supports (1024)"),
        (d.subset is None or d.subset >= 1, "data.subset", f"must be at least 1, got {d.subset}"),
        (
            d.stored_size is None or 8 <= d.stored_size <= 1024,
            "data.stored_size",
            f"must be between 8 and 1024, got {d.stored_size}",
        ),
        (d.decode_workers is None or 1 <= d.decode_workers <= MAX_DECODE_WORKERS, "data.decode_workers",
         f"must be between 1 and {MAX_DECODE_WORKERS}, got {d.decode_workers}"),
        (bool(cfg.model.weights), "model.weights", "must be 'imagenet', 'none' or a path"),
    ]
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(f"{name}: {message}")
    if t.device == "cuda":
        from alexnet_pipeline.device_data import resolve_device

        resolve_device(t.device)
