"""Config: presets, precedence, strict keys and types, impossible values, and
the command line's exit codes for them (no traceback, the field named)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alexnet_pipeline.config import (
    MIN_ALEXNET_IMAGE_SIZE,
    config_from_dict,
    preset_names,
    resolve_config,
)
from alexnet_pipeline.errors import ConfigError
from tests.conftest import run_cli


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- presets and precedence -----------------------------------------------------


def test_presets_exist_and_resolve():
    assert {"default", "seed", "smoke"} <= set(preset_names())
    for name in preset_names():
        cfg = resolve_config(name)
        assert cfg.train.image_size >= MIN_ALEXNET_IMAGE_SIZE


def test_seed_preset_is_the_tutorial_recipe():
    t = resolve_config("seed").train
    assert (t.lr, t.batch_size, t.epochs, t.image_size) == (1e-5, 128, 30, 224)
    assert t.augment is False and t.label_smoothing == 0.0 and t.schedule == "constant"
    assert resolve_config("seed").model.weights == "imagenet"


def test_smoke_preset_needs_no_download_of_weights():
    cfg = resolve_config("smoke")
    assert cfg.model.weights == "none"
    assert cfg.train.image_size < 224 and cfg.data.subset is not None


def test_precedence_preset_then_file_then_overrides(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", "train:\n  epochs: 5\n  batch_size: 7\ndata:\n  subset: 100\n")
    cfg = resolve_config("smoke", file, {"train.epochs": 9, "train.seed": None})
    assert cfg.train.epochs == 9  # flag beats file
    assert cfg.train.batch_size == 7  # file beats preset (smoke says 50)
    assert cfg.data.subset == 100
    assert cfg.train.image_size == 64  # preset beats the dataclass default (224)
    assert cfg.train.seed == 0  # an override of None means "not given"


def test_float_field_accepts_an_integer_and_roundtrips(tmp_path):
    cfg = resolve_config("default", overrides={"train.lr": 1, "train.epochs": 3})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_default_lr_follows_weights_and_batch_size():
    t = resolve_config("default", overrides={"train.batch_size": 128}).train
    assert t.lr is None
    assert t.resolved_lr("none") == pytest.approx(3e-4 / 2)
    assert t.resolved_lr("imagenet") == pytest.approx(1e-4 / 2)
    assert resolve_config("seed").train.resolved_lr("imagenet") == 1e-5


def test_run_folder_follows_from_the_config(monkeypatch, tmp_path):
    monkeypatch.delenv("ALEXNET_PIPELINE_RUNS_ROOT", raising=False)
    a = resolve_config("smoke", overrides={"data.data_dir": "/somewhere"})
    b = resolve_config("smoke", overrides={"data.data_dir": "/elsewhere", "data.cache_dir": "/cache"})
    c = resolve_config("smoke", overrides={"train.epochs": 4})
    d = resolve_config("smoke", overrides={"train.seed": 1})
    # Same results -> same folder, so re-running a command resumes it.
    assert a.run_dir() == b.run_dir()
    assert a.run_dir().parent == Path.cwd() / "runs"  # absolute: the folder is recorded
    assert len({a.run_dir(), c.run_dir(), d.run_dir()}) == 3
    assert resolve_config("smoke", overrides={"out": str(tmp_path / "x")}).run_dir() == tmp_path / "x"
    # The data's content key, when known, is part of the default name.
    assert a.run_dir("aaaaaa11") == b.run_dir("aaaaaa11") != a.run_dir("bbbbbb22")


# --- rejected configs: the message names the field ----------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"train.epochs": 0}, "train.epochs"),
        ({"train.epochs": -3}, "train.epochs"),
        ({"train.lr": 0.0}, "train.lr"),
        ({"train.lr": -1e-4}, "train.lr"),
        ({"train.batch_size": 0}, "train.batch_size"),
        ({"train.image_size": MIN_ALEXNET_IMAGE_SIZE - 1}, "train.image_size"),
        ({"train.image_size": 32}, "train.image_size"),
        ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
        ({"data.subset": 0}, "data.subset"),
        ({"train.epochs": "two"}, "train.epochs"),
        ({"train.epochs": 2.5}, "train.epochs"),
        ({"train.epochs": True}, "train.epochs"),
        ({"train.augment": "yes"}, "train.augment"),
        ({"train.lr": "fast"}, "train.lr"),
        ({"data.dataset": "mnist"}, "data.dataset"),
        ({"train.device": "tpu"}, "train.device"),
        ({"train.schedule": "linear"}, "train.schedule"),
        ({"train.warmup_epochs": float("inf")}, "train.warmup_epochs"),
        ({"train.lr": float("nan")}, "train.lr"),
        # Numbers of the right type but out of range: each used to fail later
        # with a traceback (the seed in torch.manual_seed, after preprocessing;
        # the warm-up as an OverflowError; integers too large for a float or
        # for Prefect's 64-bit JSON).
        ({"train.seed": 2**63}, "train.seed"),
        ({"train.seed": 10**30}, "train.seed"),
        ({"train.seed": -1}, "train.seed"),
        ({"train.warmup_epochs": 1e308}, "train.warmup_epochs"),
        ({"train.warmup_epochs": 31}, "train.warmup_epochs"),
        ({"train.lr": 10**400}, "train.lr"),
        ({"train.epochs": 10**6}, "train.epochs"),
        ({"train.batch_size": 2**40}, "train.batch_size"),
        ({"train.eval_batch_size": 2**40}, "train.eval_batch_size"),
        ({"train.weight_decay": 1e6}, "train.weight_decay"),
        ({"train.crop_padding": 10**9}, "train.crop_padding"),
        ({"data.decode_workers": 10**6}, "data.decode_workers"),
        ({"data.subset": 2**64}, "data.subset"),
        ({"data.data_dir": "photos-\udcff"}, "data.data_dir"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        resolve_config("default", overrides=overrides)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_the_extremes_of_each_range_are_accepted():
    cfg = resolve_config("default", overrides={"train.seed": 2**63 - 1, "train.warmup_epochs": 30, "train.epochs": 30})
    assert cfg.train.seed == 2**63 - 1
    import torch

    from alexnet_pipeline.train import epoch_seed

    torch.manual_seed(cfg.train.seed)  # what training does with it
    torch.manual_seed(epoch_seed(cfg.train.seed, 30) + 1)
    # Every schedule warms up: a warm-up longer than the run is refused under each.
    with pytest.raises(ConfigError, match=r"^train\.warmup_epochs: 99\.0 is longer than the training \(30 epochs\)"):
        resolve_config("seed", overrides={"train.warmup_epochs": 99})
    with pytest.raises(ConfigError, match=r"^train\.warmup_epochs: 1e\+308 is more than this pipeline supports"):
        resolve_config("seed", overrides={"train.warmup_epochs": 1e308})


def test_the_old_onecycle_name_is_refused_with_what_it_was():
    """`onecycle` was warm-up + cosine, not torch's OneCycleLR: a config
    that names it is refused with the equivalent, in one line."""
    with pytest.raises(ConfigError) as err:
        resolve_config("default", overrides={"train.schedule": "onecycle"})
    message = str(err.value)
    assert message.startswith("train.schedule: 'onecycle' is no longer a schedule") and "\n" not in message
    assert "schedule: warmup_cosine and warmup_epochs: a quarter of train.epochs" in message


def test_smallest_alexnet_image_size_is_accepted():
    assert resolve_config("default", overrides={"train.image_size": MIN_ALEXNET_IMAGE_SIZE}).train.image_size == 63
    with pytest.raises(ConfigError, match="at least 63"):
        resolve_config("default", overrides={"train.image_size": 62})


def test_unknown_keys_are_rejected(tmp_path):
    typo = write_yaml(tmp_path / "typo.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key train\.epoch\b") as err:
        resolve_config("default", typo)
    assert "epochs" in str(err.value)  # the known keys are listed
    section = write_yaml(tmp_path / "section.yaml", "optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key optimizer"):
        resolve_config("default", section)
    with pytest.raises(ConfigError, match=r"data\.urls"):
        resolve_config("default", overrides={"data.urls": "x"})


def test_section_must_be_a_mapping(tmp_path):
    bad = write_yaml(tmp_path / "flat.yaml", "train: 5\n")
    with pytest.raises(ConfigError, match=r"^train: expected a mapping"):
        resolve_config("default", bad)
    top = write_yaml(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        resolve_config("default", top)


def test_a_section_that_is_not_a_mapping_is_refused_even_when_a_flag_sets_that_section(tmp_path):
    """`train: fast` used to vanish under --epochs 3, taking the preset's
    train settings with it."""
    fast = write_yaml(tmp_path / "fast.yaml", "train: fast\n")
    for overrides in (None, {"train.epochs": 3}):
        with pytest.raises(ConfigError) as err:
            resolve_config("smoke", fast, overrides)
        assert str(err.value).startswith("train: expected a mapping of settings"), str(err.value)
        assert "'fast'" in str(err.value) and str(fast) in str(err.value)
    listed = write_yaml(tmp_path / "list.yaml", "data: [1, 2]\nmodel: {weights: none}\n")
    with pytest.raises(ConfigError, match=r"^data: expected a mapping.*list\.yaml"):
        resolve_config("smoke", listed, {"data.subset": 10})


def test_a_bad_value_in_the_file_is_refused_even_when_a_flag_overrides_it(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "train:\n  epochs: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an integer.*bad\.yaml"):
        resolve_config("default", bad, {"train.epochs": 3})


def test_an_empty_section_changes_nothing(tmp_path):
    empty = write_yaml(tmp_path / "empty-section.yaml", "train:\n  # epochs: 3\ndata:\n")
    assert resolve_config("smoke", empty, {"train.seed": 4}) == resolve_config("smoke", overrides={"train.seed": 4})


# --- hostile YAML: bounded before anything is built ---------------------------------


def _alias_bomb(levels: int) -> str:
    """The "billion laughs": each level names the one below nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntrain: {{epochs: *l{levels}}}\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path, levels):
    """9 levels expand to 387 million strings: expanding (or echoing) it used
    to print a 351 MB error line or raise MemoryError."""
    bomb = write_yaml(tmp_path / "bomb.yaml", _alias_bomb(levels))
    assert bomb.stat().st_size < 600
    with pytest.raises(ConfigError) as err:
        resolve_config("default", bomb)
    message = str(err.value)
    assert message.startswith(f"{bomb}: the YAML expands to more than 1,000,000"), message
    assert "aliases" in message and len(message) < 400


def test_a_few_aliases_are_fine(tmp_path):
    reuse = write_yaml(tmp_path / "reuse.yaml", "train: &t {epochs: 2, seed: 5}\n")
    assert resolve_config("default", reuse).train.seed == 5


def test_deep_nesting_is_refused_naming_the_file(tmp_path):
    """PyYAML's composer recurses per level: 5000 brackets were a RecursionError."""
    deep = write_yaml(tmp_path / "deep.yaml", "train: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=rf"^{deep}: nested more than 16 levels deep at line 1"):
        resolve_config("default", deep)


def test_a_config_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  epochs: 3  # r\u00e9glage\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        resolve_config("default", latin1)
    assert str(err.value) == f"config file {latin1} is not UTF-8 text: byte 0xe9 at line 2, column 17; save it as UTF-8"


def test_paths_that_are_not_utf8_are_refused_naming_them(tmp_path):
    """Such a path (Python keeps its bytes as lone surrogates) could not be
    written into checkpoints, reports or Prefect's parameters."""
    import os

    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9glage.yaml"))
    odd.write_text("train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"^--config .*/r\\xe9glage\.yaml: the file name is not valid UTF-8"):
        resolve_config("default", odd)
    with pytest.raises(ConfigError, match=r"^out: .*/run-\\xff is not valid UTF-8; rename it"):
        resolve_config("default", overrides={"out": os.fsdecode(os.fsencode(tmp_path) + b"/run-\xff")})


def test_a_huge_config_file_is_refused_without_reading_it_all(tmp_path):
    huge = write_yaml(tmp_path / "huge.yaml", "# padding\n" * 40_000)
    with pytest.raises(ConfigError, match=r"larger than 256 KiB"):
        resolve_config("default", huge)


@pytest.mark.parametrize(("text", "phrase"), [
    ("train:\n  [1, 2]: 3\n", "found unhashable key"),          # was a TypeError in the duplicate-key check
    ("1: 2\nfoo: 3\n", "unknown config key foo"),               # mixed key types were a TypeError when sorted
    ("train:\n  epochs: " + "9" * 5000 + "\n", "a value cannot be read"),  # a ValueError inside PyYAML
    ("train:\n  epochs: 2024-13-45\n", "month must be in 1..12"),
    ("train:\n  epochs: " + "9" * 50 + "\n", "out of range"),
    ("train:\n  lr: " + "9" * 400 + "\n", "must be a finite number"),
    ("data:\n  url: " + "x" * 100_000 + "\n", None),
], ids=["list-key", "mixed-keys", "5000-digits", "bad-date", "long-int", "int-beyond-float", "long-string"])
def test_odd_yaml_is_refused_with_a_short_message(tmp_path, text, phrase):
    odd = write_yaml(tmp_path / "odd.yaml", text)
    try:
        resolve_config("default", odd, {"data.dataset": "imagefolder"} if phrase is None else None)
    except ConfigError as exc:
        message = str(exc)
        assert phrase is not None and phrase in message, message
        assert len(message) < 400, message  # the value is shown cut, never whole
    else:
        assert phrase is None  # a long URL is allowed; it is just not echoed anywhere


def test_malformed_yaml_names_the_line(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "train:\n  epochs: 3\n  lr: [0.1\n  seed: 1\ndata:\n  subset: 5\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("default", bad)
    message = str(err.value)
    assert "malformed YAML" in message and str(bad) in message
    assert "line 4" in message or "line 5" in message, message


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string; the user meant a number."""
    cfg = resolve_config("default", write_yaml(tmp_path / "lr.yaml", "train:\n  lr: 1e-4\n  weight_decay: 5E-2\n"))
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 0.05


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    twice = write_yaml(tmp_path / "twice.yaml", "train:\n  epochs: 1\n  lr: 0.001\n  epochs: 5\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("default", twice)
    assert "'epochs' is given twice" in str(err.value) and "line 4" in str(err.value)


def test_crop_padding_larger_than_cifar_images_is_refused_before_any_work(tmp_path):
    from alexnet_pipeline.preflight import check_inputs

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")  # present: no network check
    cfg = resolve_config("smoke", overrides={"data.data_dir": str(tmp_path), "train.crop_padding": 40})
    with pytest.raises(ConfigError, match=r"train.crop_padding: 40 is not smaller than the stored images' side \(32 px\)"):
        check_inputs(cfg)


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config("default", tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        resolve_config("tiny")


def test_empty_yaml_file_changes_nothing(tmp_path):
    empty = write_yaml(tmp_path / "empty.yaml", "# nothing\n")
    assert resolve_config("smoke", empty) == resolve_config("smoke")


# --- the command line: errors before any work, exit codes, no traceback --------------




@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--epochs", "0"], "train.epochs"),
        (["--lr", "0"], "train.lr"),
        (["--lr", "-0.5"], "train.lr"),
        (["--image-size", "62"], "train.image_size"),
        (["--subset", "0"], "data.subset"),
        (["--batch-size", "0"], "train.batch_size"),
        (["--seed", str(10**30)], "train.seed"),
    ],
)
def test_cli_rejects_bad_values_with_exit_code_2(argv, field, run_main, tmp_path):
    code, err = run_main(["--weights", "none", "--out", str(tmp_path / "run"), *argv])
    assert code == 2
    assert f"error: {field}:" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_cli_missing_weights_file_fails_before_prefect_starts(run_main, tmp_path):
    code, err = run_main(["--weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "run")])
    assert code == 1
    assert "missing.pth: no such file" in err and "'none'" in err


def test_cli_malformed_config_file(run_main, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "train:\n  epochs: 2\n   lr: 1\n")
    code, err = run_main(["--config", str(bad)])
    assert code == 2
    assert "malformed YAML" in err and "line 3" in err


def test_cli_config_that_is_not_utf8_exits_2_naming_it(run_main, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"train:\n  epochs: 2 # \xe9\n")
    code, err = run_main(["--config", str(latin1), "--out", str(tmp_path / "run")])
    assert code == 2 and "Traceback" not in err
    assert f"error: config file {latin1} is not UTF-8 text" in err
    assert not (tmp_path / "run").exists()


def test_a_bug_keeps_its_traceback_on_the_command_line(run_main, tmp_path, monkeypatch):
    """Only a PipelineError becomes an `error:` line: anything else is a bug
    and reaches Python with its traceback (the sweep command used to print
    any RuntimeError as a user's error)."""
    import flows.sweep

    def bug(path):
        raise RuntimeError("a bug in the code")

    monkeypatch.setattr(flows.sweep, "load_yaml", bug)
    with pytest.raises(RuntimeError, match="a bug in the code"):
        run_main(["--file", str(tmp_path / "sweep.yaml")], command="sweep")


def test_a_sweep_whose_trials_all_failed_is_one_error_line(prefect_storage, tmp_path):
    """Every trial failing is the user's to look into (here: no such
    deployment), so it is a PipelineError: one line, no traceback."""
    from alexnet_pipeline.errors import PipelineError
    from flows.sweep import sweep

    with pytest.raises(PipelineError, match=r"^all 1 trials failed; see .*sweep\.csv \(first error: ObjectNotFound"):
        sweep(trials=[{"preset": "smoke"}], out=str(tmp_path / "sweep"), deployment="no-such/deployment")


def test_a_trial_that_cannot_start_logs_a_bug_with_its_traceback(monkeypatch, caplog):
    """The sweep goes on past a trial that could not be started; a missing
    deployment is logged as one line, a bug with its traceback."""
    import logging

    from prefect.exceptions import ObjectNotFound

    import tasks.sweep

    logger = logging.getLogger("tests.sweep")
    # Only to caplog: the root logger's handlers (Prefect's console one) would
    # print the deliberate traceback into a later test's captured stderr.
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    monkeypatch.setattr(tasks.sweep, "get_run_logger", lambda: logger)
    for raised, traceback in ((ObjectNotFound(ValueError("404")), False), (TypeError("a bug"), True)):
        def start(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(tasks.sweep, "run_deployment", start)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="tests.sweep"):
            row = tasks.sweep.run_trial.fn("d/e", 1, {"out": "x"}, None, 1.0, "run", "key")
        assert row["state"] == "NotStarted" and row["error"].startswith(type(raised).__name__)
        assert [bool(r.exc_info) for r in caplog.records] == [traceback]
    logger.removeHandler(caplog.handler)


def test_cli_wrong_type_is_an_argparse_error(run_main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--epochs", "two"])
    assert exit_info.value.code == 2
    assert "--epochs: invalid int value" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_process_exit_code_and_no_traceback(tmp_path):
    """The real process: `sys.exit(main())` turns the error into the exit code."""
    unknown = write_yaml(tmp_path / "unknown.yaml", "train:\n  epochs: 2\n  learning_rate: 0.1\n")
    result = run_cli(["--config", str(unknown), "--weights", "none"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "unknown config key train.learning_rate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_how_the_data_is_fetched_and_checked_leaves_the_run_folder_alone():
    """--no-verify, another mirror or checksum, another data or cache folder:
    the same images give the same results, so the same run folder (the data's
    content key tells different images apart)."""
    base = resolve_config("default")
    same = [resolve_config("default", overrides=o) for o in (
        {"data.verify": False}, {"data.md5": "0" * 32}, {"data.url": "file:///mirror/cifar.tar.gz"},
        {"data.data_dir": "/elsewhere"}, {"data.cache_dir": "/tmp/cache"})]
    assert {cfg.fingerprint() for cfg in same} == {base.fingerprint()}
    assert {cfg.run_dir("abcdef123") for cfg in same} == {base.run_dir("abcdef123")}
    assert resolve_config("default", overrides={"data.subset": 100}).fingerprint() != base.fingerprint()


@pytest.mark.parametrize("module", ["flows.full_run", "flows.evaluate", "flows.sweep"])
def test_every_command_line_flag_is_described(module, monkeypatch):
    import argparse
    import importlib

    parsers = []
    real_parse_args = argparse.ArgumentParser.parse_args

    def keep_parser(self, args=None, namespace=None):
        parsers.append(self)
        return real_parse_args(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep_parser)
    importlib.import_module(module).parse_args([])
    undescribed = [a.option_strings or a.dest for a in parsers[0]._actions if not a.help]
    assert undescribed == []


def test_a_long_cpu_run_is_announced_with_its_measured_time_per_epoch():
    """Without a GPU, the default recipe would train for hours per epoch: the
    command line says so first, from one step timed here, with a smaller run
    to choose. A short run (the smoke preset's size) is not held up."""
    from alexnet_pipeline.preflight import cpu_training_warning

    big = resolve_config("default", overrides={"train.device": "cpu", "train.image_size": 64})
    message = cpu_training_warning(big, 10_000_000)
    assert message.startswith("no GPU in use: 10,000,000 training images at 64x64 take about ")
    assert "per epoch on this CPU" in message and "for 30 epochs" in message and "--preset smoke" in message
    assert cpu_training_warning(resolve_config("smoke", overrides={"train.device": "cpu"}), 1000) is None


def test_sweep_command_line_values_take_the_type_of_their_setting():
    """`python flows/sweep.py --set KEY=VALUE`: a value is read as its run
    setting's type, so a folder named 2024 stays a name and 1e-4 a number."""
    from flows.sweep import _value

    assert _value("lr", "1e-4") == 1e-4 and _value("seed", "3") == 3 and _value("skip_bad_images", "true") is True
    assert _value("data_dir", "2024") == str(Path.cwd() / "2024") and _value("weights", "none") == "none"
    assert _value("preset", "smoke") == "smoke" and _value("config_file", "2024") == "2024"
