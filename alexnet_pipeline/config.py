"""Typed, strict configuration: presets, YAML files and command-line overrides.

Precedence, lowest first: the field defaults (the default recipe), a preset
(``alexnet_pipeline/presets/NAME.yaml``), a ``--config`` YAML file, then flags.
Every value is checked before any work starts; an error names the field.

    from alexnet_pipeline.config import resolve_config
    cfg = resolve_config(preset="smoke", overrides={"train.epochs": 3})
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from alexnet_pipeline.errors import ConfigError
from alexnet_pipeline.files import read_regular_file

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
# Which checkpoints stay on disk once evaluated: every epoch is trained and
# evaluated the same either way.
RESULT_NEUTRAL_TRAIN_FIELDS = ("keep_checkpoints",)


def results_part(config: dict) -> dict:
    """The part of a config dict that changes results: what the fingerprint
    hashes and what a refusal to resume compares."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items() if k != "out"}
    for section, fields in (("data", RESULT_NEUTRAL_DATA_FIELDS), ("train", RESULT_NEUTRAL_TRAIN_FIELDS)):
        for key in fields:
            d.get(section, {}).pop(key, None)
    return d

# Read only when downloading CIFAR-10: an image-folder run's report leaves them out.
CIFAR10_ONLY_FIELDS = ("url", "md5", "verify")
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
# Prefect's JSON parameters and torch take 64-bit integers.
MAX_INT64 = 2**63 - 1
SECTIONS = ("data", "model", "train")


# --- the declaration: every setting once, with its type, bounds and meaning ---------
#
# The field declarations below are the one list of settings. From them follow
# the YAML keys, the checks (with the messages a user sees), and, for fields
# marked Flag(): full_run's command-line flags and --help, the full_run flow's
# typed parameters (Prefect checks a bad value before a run starts) and the
# names a sweep may vary (see RUN_OPTIONS). Adding a setting is one field here.


_NO_CONST = object()


@dataclass(frozen=True)
class Flag:
    """Marks a field as a setting of a single run, under the field's own
    name: a flag of `flows/full_run.py` (`--field-name` unless `flag` says),
    a parameter of the full_run flow and a key a sweep may vary. `const`: a
    flag without a value that stores it (--no-verify); `help`: where the
    flag reads differently from the field's description."""

    flag: str | None = None
    metavar: str | None = None
    const: Any = _NO_CONST
    help: str | None = None


@dataclass(frozen=True)
class Limits:
    """How a value beyond the field's bounds is explained: templates with
    {value} and {limit}. None: "must be at least {limit}, got {value}" below,
    "{value} is more than this pipeline supports ({limit})" above."""

    below: str | None = None
    above: str | None = None


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string: take it as the number meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # refused below as "expected a number"
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)  # an integer beyond a double's range raises here
        except OverflowError:
            return math.inf
    return value


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A path given on the command line with bytes that are not UTF-8
        # (Python keeps them as lone surrogates): it could not be recorded
        # in checkpoints, reports or Prefect's parameters.
        shown_value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise PydanticCustomError(
            "not_utf8", "{value} is not valid UTF-8; rename it (or link it under a UTF-8 name) and pass that",
            {"value": _short_repr.repr(shown_value)[1:-1] if len(shown_value) > 200 else shown_value}) from None
    return value


def absolute_path(value: str) -> str:
    """A path as a user gave it (~ expanded), made absolute against the
    current folder. Every path a user gives passes here once, before it
    enters a config, a flow's parameters, a cache key or a record: a
    relative one would mean another folder to every later reader (a run
    evaluated from another working folder, a cache hit keyed on "data").
    Empty stays empty (it means: not given)."""
    return os.path.abspath(os.path.expanduser(value)) if value else value


WEIGHTS_KEYWORDS = ("imagenet", "none")


def _absolute_weights(value: str) -> str:
    return value if value in WEIGHTS_KEYWORDS else absolute_path(value)


# Strict: "3" is not 3 and true is not 1 (a YAML typo stays an error); the
# same annotations type the flow's parameters, so Prefect is as strict.
Integer = Annotated[int, Strict()]
Number = Annotated[float, Strict(), BeforeValidator(_number), AllowInfNan(False)]
Text = Annotated[str, Strict(), AfterValidator(_utf8)]
Switch = Annotated[bool, Strict()]
# A folder or file: made absolute when checked (see absolute_path).
PathText = Annotated[Text, AfterValidator(absolute_path)]


class _Section(BaseModel):
    """Unknown keys and loose types refused; values never change after
    checking (a config is shared by the tasks of a run). Built from user
    input through config_from_dict/resolve_config, whose errors are
    ConfigErrors; built in code (tests, benchmarks), a mistake is pydantic's
    ValidationError."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check(ok: bool, field: str, message: str) -> None:
    """A check across fields, raised as pydantic's error and translated by
    _config_error like the others."""
    if not ok:
        raise PydanticCustomError("cross_field", "{message}", {"field": field, "message": message})


def _only_types(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("only_types"))


def _not_onecycle(value: Any) -> Any:
    # A schedule once offered under this name was not torch's OneCycleLR (no
    # momentum cycle, its warm-up a fixed quarter whatever train.warmup_epochs
    # said): a config naming it is refused, not silently read as another.
    if value == "onecycle":
        raise PydanticCustomError(
            "refused_value", "'onecycle' is no longer a schedule: it was a linear warm-up over the first quarter "
            "of the steps, then cosine decay, not torch's OneCycleLR; for the same, write schedule: warmup_cosine "
            "and warmup_epochs: a quarter of train.epochs")
    return value


class DataConfig(_Section):
    dataset: Annotated[Literal["cifar10", "imagefolder"], Flag()] = Field(
        "cifar10", description="cifar10 (downloaded into --data-dir) or imagefolder "
                               "(DIR/train/<class>/*, DIR/test/<class>/*, and DIR/val/<class>/* if it has one)")
    data_dir: Annotated[PathText, Flag(metavar="DIR")] = Field(
        "data", validate_default=True, description="CIFAR-10 download folder, or the image folder (train/ and test/)")
    verify: Annotated[Switch, Flag("--no-verify", const=False,
                                   help="accept a CIFAR-10 archive whose MD5 differs from the official one")] = Field(
        True, description="check the CIFAR-10 archive's MD5; false accepts a modified copy")
    subset: Annotated[Integer | None, Flag(metavar="N")] = Field(
        None, ge=1, le=MAX_INT64, description="at most N train and N test images, equal per class")
    stored_size: Annotated[Integer | None, Limits("must be between 8 and 1024, got {value}",
                                                  "must be between 8 and 1024, got {value}")] = Field(
        None, ge=8, le=1024, description="side of the square uint8 images kept in the cache (image folders only); "
                                         "default: the image size, or the images' own size when that is smaller")
    cache_dir: Annotated[PathText | None, Flag(metavar="DIR")] = Field(
        None, description="where preprocessed arrays go (default: DATA_DIR/preprocessed for CIFAR-10; for an "
                          "image folder, $XDG_CACHE_HOME/alexnet-pipeline/preprocessed, else "
                          "~/.cache/alexnet-pipeline/preprocessed: never inside the images' folder)")
    skip_bad_images: Annotated[Switch, Flag(const=True)] = Field(
        False, description="leave out image files that cannot be decoded (listed in the report)")
    url: Text = Field(CIFAR10_URL, description="where the CIFAR-10 archive is downloaded from")
    md5: Text = Field(CIFAR10_MD5, description="the CIFAR-10 archive's MD5 (checked unless verify is false)")
    val_fraction: Annotated[Number, Flag(metavar="F"), Limits("must be between 0 and 0.5, got {value}",
                                                            "must be between 0 and 0.5, got {value}")] = Field(
        0.1, ge=0, le=0.5, description="share of each class's training images held out as the validation split, "
                                       "the same images for every seed and trial; the best epoch is chosen on it. "
                                       "0: no split, the best epoch is chosen on the test set. An image folder "
                                       "with a val/ folder validates on that instead")
    decode_workers: Annotated[Integer | None, Limits(f"must be between 1 and {MAX_DECODE_WORKERS}, got {{value}}",
                                                     f"must be between 1 and {MAX_DECODE_WORKERS}, got {{value}}")] = Field(
        None, ge=1, le=MAX_DECODE_WORKERS, description="threads that decode image-folder files (default: twice the CPUs, at most 32)")


class ModelConfig(_Section):
    weights: Annotated[Text, AfterValidator(_absolute_weights), Flag(metavar="imagenet|none|PATH"),
                       Limits(below="must be 'imagenet', 'none' or a path")] = Field(
        "imagenet", min_length=1, description="starting weights: imagenet (torchvision IMAGENET1K_V1), none "
                                              "(random init) or the path of a torchvision-format state_dict")


class TrainConfig(_Section):
    epochs: Annotated[Integer, Flag(metavar="N")] = Field(
        30, ge=1, le=MAX_EPOCHS, description="training epochs, one checkpoint each")
    batch_size: Annotated[Integer, Flag(metavar="N")] = Field(
        256, ge=1, le=MAX_BATCH_SIZE, description="training batch size; the default lr scales with it")
    lr: Annotated[Number | None, Flag(), Limits(above="{value} is far too large for AdamW; try 1e-4")] = Field(
        None, gt=0, lt=10, description="base learning rate (default: chosen from the weights)")
    weight_decay: Annotated[Number, Limits(below="must be >= 0, got {value}")] = Field(
        0.05, ge=0, description="AdamW's weight decay")
    schedule: Annotated[Literal["constant", "warmup_cosine"], BeforeValidator(_not_onecycle)] = Field(
        "warmup_cosine", description="the learning rate after the warm-up: constant, or cosine decay to 0 "
                                     "at the last step")
    warmup_epochs: Annotated[Number, Limits(below="must be >= 0, got {value}")] = Field(
        1.0, ge=0, le=MAX_EPOCHS, description="epochs of linear warm-up to the lr, under either schedule (0: none)")
    label_smoothing: Annotated[Number, Limits("must be in [0, 1), got {value}", "must be in [0, 1), got {value}")] = Field(
        0.1, ge=0, lt=1, description="label smoothing of the training loss")
    augment: Switch = Field(True, description="random crop (from a reflect-padded image) and horizontal flip")
    crop_padding: Annotated[Integer, Limits("must be >= 0, got {value}", "{value} is larger than any image here ({limit})")] = Field(
        4, ge=0, le=1024, description="reflect padding, in pixels, around an image before its random crop")
    image_size: Annotated[Integer, Flag(), Limits(
        "{value} is too small for AlexNet; use at least {limit} (224 is standard)",
        "{value} is larger than this pipeline supports ({limit})")] = Field(
        224, ge=MIN_ALEXNET_IMAGE_SIZE, le=1024, description="model input side in pixels")
    seed: Annotated[Integer, Flag(metavar="N"), Limits(f"must be between 0 and 2**63-1 ({MAX_SEED}), got {{value}}",
                                                       f"must be between 0 and 2**63-1 ({MAX_SEED}), got {{value}}")] = Field(
        0, ge=0, le=MAX_SEED, description="seeds the initial weights, order, augmentation and dropout")
    device: Annotated[Literal["auto", "cpu", "cuda"], Flag()] = Field(
        "auto", description="auto: a CUDA GPU when there is one")
    eval_batch_size: Integer = Field(1000, ge=1, le=MAX_BATCH_SIZE, description="batch size when evaluating")
    keep_checkpoints: Annotated[Literal["best_last", "all"], Flag()] = Field(
        "best_last", description="checkpoints kept once evaluated: best_last (the selected epoch's and the last "
                                 "epoch's) or all. Every epoch is evaluated and reported either way")

    @model_validator(mode="after")
    def _warmup_within_training(self, info: ValidationInfo) -> TrainConfig:
        # A warm-up past the last epoch never reaches the lr asked for.
        if not _only_types(info):
            _check(self.warmup_epochs <= self.epochs, "warmup_epochs",
                   f"{self.warmup_epochs} is longer than the training ({self.epochs} epochs); use at most {self.epochs}")
        return self

    def resolved_lr(self, weights: str) -> float:
        return self.lr if self.lr is not None else default_lr(weights, self.batch_size)


def default_lr(weights: str, batch_size: int) -> float:
    """The lr of a run that sets none. Fine-tuning pretrained features wants
    a smaller step than training from scratch; both are per 256 images and
    scale linearly."""
    base = 3e-4 if weights == "none" else 1e-4
    return base * batch_size / 256


class PipelineConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: Annotated[PathText | None, Flag(metavar="DIR")] = Field(
        None, description="run folder (default: <runs root>/<name derived from the config>)")

    @model_validator(mode="after")
    def _weights_survive_a_step(self, info: ValidationInfo) -> PipelineConfig:
        if not _only_types(info):
            # AdamW multiplies the weights by (1 - lr * weight_decay) every step.
            t, lr = self.train, self.train.resolved_lr(self.model.weights)
            _check(t.weight_decay * lr < 1, "train.weight_decay",
                   f"{t.weight_decay} times the lr ({lr}) is at least 1: every step would wipe out the weights; "
                   "0.05 is usual")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def fingerprint(self) -> str:
        """Hash of everything that changes results; the run folder follows from it."""
        d = results_part(self.to_dict())
        # A weights file counts by its content: the same path holding other
        # weights is another run, not a cache hit.
        weights = Path(self.model.weights).expanduser()
        if self.model.weights not in WEIGHTS_KEYWORDS and weights.is_file():
            from alexnet_pipeline.integrity import sha256_file

            d["model"]["weights_sha256"] = sha256_file(weights)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def run_dir(self, dataset_key: str | None = None) -> Path:
        """`out`, or a folder named after the config and, when given, the
        preprocessed data's content key: the same command on the same data
        always lands in the same folder (which is how a re-run resumes)."""
        if self.out:
            return Path(self.out).expanduser()
        weights = self.model.weights if self.model.weights in WEIGHTS_KEYWORDS else "custom"
        name = f"{self.data.dataset}-{weights}-e{self.train.epochs}-{self.fingerprint()}"
        return runs_root() / (f"{name}-{dataset_key[:6]}" if dataset_key else name)


def runs_root() -> Path:
    """Parent of the default run folders: $ALEXNET_PIPELINE_RUNS_ROOT, else
    ./runs (absolute: a run folder's path is recorded)."""
    return Path(absolute_path(os.environ.get(RUNS_ROOT_ENV) or "runs"))


# --- the settings of one run: flags, flow parameters, sweep keys ---------------------


@dataclass(frozen=True)
class RunOption:
    """A field marked Flag(): `name` is its flag's, flow parameter's and
    sweep key's name, `path` the dotted field ("train.epochs")."""

    name: str
    path: str
    field: FieldInfo
    flag: Flag

    @property
    def value_type(self) -> Any:
        """The field's type with its bounds, for a flow parameter (JSON: no
        YAML-string numbers to read, and without that step pydantic writes
        the bounds into the JSON schema Prefect checks parameters against)."""
        return _without_before_validators(Annotated[self.field.annotation, *self.field.metadata])

    @property
    def is_switch(self) -> bool:
        """A flag without a value (it stores Flag.const)."""
        return self.flag.const is not _NO_CONST

    @property
    def help(self) -> str:
        """The flag's --help line."""
        if self.is_switch:  # a flag without a value has no default to state
            return self.flag.help or self.field.description
        return self.description

    @property
    def description(self) -> str:
        """What the setting means, with its default (the flow parameter's description)."""
        text = self.field.description
        return text + (f" (default: {self.field.default})" if self.field.default is not None else "")

    @property
    def absolute(self) -> typing.Callable[[str], str] | None:
        """For a path setting (data_dir, cache_dir, weights, out): what makes
        its value absolute (see absolute_path), for the command lines to
        apply before a value becomes a flow parameter; else None."""
        return next((rule for rule in _after_validators(self.value_type) if rule in _PATH_RULES), None)

    def parse(self, text: str) -> Any:
        """A value written as text (`--set seed=1`), read as the field's type
        (a path made absolute); what does not read is passed on as text, for
        the check to name."""
        if self.absolute is not None:
            return self.absolute(text)
        kind = base_type(self.field.annotation)
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text


_PATH_RULES = (absolute_path, _absolute_weights)


def _after_validators(annotation: Any) -> list:
    """The functions of every AfterValidator in `annotation`, nested ones too."""
    found = []
    for arg in (typing.get_args(annotation) if typing.get_origin(annotation) in (Annotated, typing.Union, types.UnionType)
                else ()):
        if isinstance(arg, AfterValidator):
            found.append(arg.func)
        elif not isinstance(arg, (Flag, Limits)):
            found += _after_validators(arg)
    return found


def _without_before_validators(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        kept = [m for m in metadata if not isinstance(m, BeforeValidator)]
        inner = _without_before_validators(inner)
        return Annotated[inner, *kept] if kept else inner
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_without_before_validators(a) for a in typing.get_args(annotation))]
    return annotation


def base_type(annotation: Any) -> Any:
    """int for `Integer | None`, Literal[...] stays itself."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def _run_options() -> dict[str, RunOption]:
    options = {}
    sections = [(f"{name}.", f.annotation) for name, f in PipelineConfig.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
    for section, model in [*sections, ("", PipelineConfig)]:
        for name, field in model.model_fields.items():
            flag = next((m for m in field.metadata if isinstance(m, Flag)), None)
            if flag is not None:
                if name in options:
                    raise TypeError(f"two settings marked Flag() are called {name!r}: {options[name].path}, {section}{name}")
                options[name] = RunOption(name, f"{section}{name}", field, flag)
    return options


# Every setting of one run, in declaration order: see Flag.
RUN_OPTIONS: dict[str, RunOption] = _run_options()


def run_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Run settings by name ({"epochs": 3}) as dotted overrides ({"train.epochs": 3})."""
    unknown = sorted(set(params) - set(RUN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown setting {shown(unknown[0])}; the settings of a run are "
                          f"{', '.join(RUN_OPTIONS)} (others go in a --config file)")
    return {RUN_OPTIONS[name].path: value for name, value in params.items()}


# --- pydantic's errors, in this pipeline's words --------------------------------------

_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60
_short_repr.maxlong = 40
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxset = _short_repr.maxdict = 4
_short_repr.maxlevel = 2


def shown(value: Any) -> str:
    """repr() cut to a line: an error message never echoes a whole (maybe
    huge) value from a config file back at the user."""
    return _short_repr.repr(value)


_UNKNOWN_KEY = {"extra_forbidden", "invalid_key"}
_NOT_A_SECTION = {"model_type", "model_attributes_type", "dict_type"}
_OUT_OF_BOUNDS = {"greater_than": ("below", "gt"), "greater_than_equal": ("below", "ge"),
                  "less_than": ("above", "lt"), "less_than_equal": ("above", "le"),
                  "string_too_short": ("below", "min_length")}
_DEFAULT_LIMITS = {"ge": "must be at least {limit}, got {value}", "gt": "must be greater than {limit}, got {value}",
                   "le": "{value} is more than this pipeline supports ({limit})",
                   "lt": "{value} is more than this pipeline supports ({limit})"}


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model that holds loc's last part, and that part's field (None: not a field)."""
    field = None
    for i, part in enumerate(loc):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return model, None
        if i < len(loc) - 1:
            model = field.annotation
    return model, field


def _explain(error: dict, model: type[BaseModel], prefix: str) -> tuple[tuple, str]:
    """(rank, message) of one pydantic error; the lowest rank is reported,
    in the order the old hand-written checks ran: unknown keys and sections
    that are not mappings, then types, then bounds, then cross-field checks."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    name = prefix + ".".join(str(p) for p in loc)
    if kind in _UNKNOWN_KEY:
        holder = model if len(loc) == 1 else _field_at(model, loc[:-1])[1].annotation
        key = loc[-1] if kind == "extra_forbidden" else value
        order = (0, len(loc), 0, repr(key))  # a level's unknown keys first, sorted as text (keys may be 1, null, ...)
        key = key if isinstance(key, str) and len(key) <= 60 else shown(key)
        where = prefix + "".join(f"{p}." for p in loc[:-1])
        return order, f"unknown config key {where}{key}; known keys here: {', '.join(sorted(holder.model_fields))}"
    if kind in _NOT_A_SECTION:
        section = name or "config"
        return (0, len(loc), 1, ""), f"{section}: expected a mapping of settings (like `{section}: {{key: value}}`), got {shown(value)}"
    if kind == "cross_field":
        ctx = error["ctx"]
        return (3,), f"{prefix}{''.join(f'{p}.' for p in loc)}{ctx['field']}: {ctx['message']}"
    if kind in ("not_utf8", "refused_value"):
        return (1,), f"{name}: {error['msg']}"
    _, field = _field_at(model, loc)
    expected = base_type(field.annotation) if field is not None else None
    if expected is int and isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return (1,), f"{name}: {shown(value)} is out of range (a 64-bit integer)"
    if kind in _OUT_OF_BOUNDS and field is not None:
        side, bound = _OUT_OF_BOUNDS[kind]
        limits = next((m for m in field.metadata if isinstance(m, Limits)), Limits())
        template = getattr(limits, side) or _DEFAULT_LIMITS[bound]
        limit = error.get("ctx", {}).get(bound)
        text = str(value) if isinstance(value, (int, float)) else shown(value)
        return (2,), f"{name}: {template.format(value=text, limit=limit)}"
    if kind == "finite_number":
        return (1,), f"{name}: must be a finite number, got {shown(value)}"
    if typing.get_origin(expected) is Literal:
        return (1,), f"{name}: {shown(value)} is not one of {', '.join(map(repr, typing.get_args(expected)))}"
    wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(expected)
    if wanted:
        return (1,), f"{name}: expected {wanted}, got {shown(value)}"
    return (1,), f"{name}: {error['msg']}, got {shown(value)}"  # a kind of error this table does not know yet


def _config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "",
                  only_types: bool = False) -> ConfigError | None:
    """The one error to report, as a ConfigError that names the field (None:
    only bounds were broken and `only_types` says to let them pass)."""
    explained = sorted((order, i, message) for i, (order, message) in
                       enumerate(_explain(e, model, prefix) for e in exc.errors(include_url=False)))
    if only_types:
        explained = [r for r in explained if r[0][0] < 2]
    return ConfigError(explained[0][2]) if explained else None


def _build(values: Any, *, only_types: bool = False) -> PipelineConfig | None:
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a mapping of settings (like `config: {{key: value}}`), got {shown(values)}")
    try:
        return PipelineConfig.model_validate(values, context={"only_types": only_types})
    except ValidationError as exc:
        error = _config_error(exc, PipelineConfig, only_types=only_types)
        if error is not None:
            raise error from None
    return None


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
        # A FIFO, a device or a folder is refused before it is read; size and time bounded.
        raw = read_regular_file(path, "config file", ConfigError, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
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
        # Each layer's keys and types are checked on their own: a malformed
        # section or value in a file is refused even when a flag sets the
        # same field (merging first would let `train: fast` and the preset's
        # train settings silently vanish under `--epochs 3`). Bounds and
        # checks across fields apply to the merged result.
        try:
            _build(values, only_types=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {source})" if source is not None else str(exc)) from None
        merged = _merge(merged, values)
    return config_from_dict(merged)


def config_from_dict(values: dict) -> PipelineConfig:
    """Build and check a config from its dict (a checkpoint's, a merge of
    layers): every problem is a ConfigError that names the field."""
    cfg = _build(values)
    if cfg.train.device == "cuda":
        from alexnet_pipeline.device_data import resolve_device

        resolve_device(cfg.train.device)
    return cfg


def resolve_run(preset: str = "default", config_file: str | Path | None = None, **settings: Any) -> PipelineConfig:
    """The config of one run from its settings by name (RUN_OPTIONS: what
    full_run's flags and flow parameters are called); None: not given."""
    return resolve_config(preset, config_file, run_overrides(settings))
