"""Tests for mnist_lr.config: the real conf/ composed through Hydra, types, and range checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from mnist_lr.config import ConfigError, register_configs, validate

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(*overrides: str) -> DictConfig:
    """The run config exactly as ``python -m mnist_lr.run OVERRIDES`` would see it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def yaml_values(path: Path) -> dict:
    """A config file's own values, without its defaults list."""
    values = OmegaConf.to_container(OmegaConf.load(path))
    values.pop("defaults", None)
    return values


def group_overrides(path: Path) -> dict[str, str]:
    """``{"optimizer": "sgd", ...}`` from an experiment's ``override /group: option`` lines."""
    choices = {}
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        for key, option in entry.items():
            choices[key.removeprefix("override /")] = option
    return choices


GROUP_OPTIONS = [(group, option) for group in ("optimizer", "schedule", "batch_size")
                 for option in options(group)]  # fmt: skip
EXPERIMENTS = options("experiment")


def test_conf_has_expected_options():
    # the parametrized tests below discover options from conf/; make sure they find these
    assert set(options("optimizer")) >= {"adam", "momentum", "nesterov", "sgd"}
    assert set(options("schedule")) >= {"constant", "cosine", "exponential", "plateau", "step"}
    assert set(options("batch_size")) >= {"bs1", "bs10", "bs100", "bs1000", "full"}
    assert set(EXPERIMENTS) >= {"config_1", "config_2", "config_3", "config_sample"}


def test_compose_defaults():
    cfg = compose_config()

    validate(cfg)
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == 0.1
    assert cfg.schedule.name == "constant"
    assert cfg.batch_size.size == 100
    assert cfg.train.epochs == 10
    assert cfg.data.val_size == 5000
    assert cfg.tracking.uri is None


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_compose_every_group_option_validates(group, option):
    cfg = compose_config(f"{group}={option}")

    validate(cfg)
    for key, value in yaml_values(CONF_DIR / group / f"{option}.yaml").items():
        assert cfg[group][key] == value, f"{group}.{key}"
    if group != "batch_size":
        assert cfg[group].name == option


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_compose_every_experiment_has_its_yaml_values(experiment):
    path = CONF_DIR / "experiment" / f"{experiment}.yaml"

    cfg = compose_config(f"+experiment={experiment}")

    validate(cfg)
    own_values = yaml_values(path)
    for group, option in group_overrides(path).items():
        expected = yaml_values(CONF_DIR / group / f"{option}.yaml") | own_values.get(group, {})
        for key, value in expected.items():
            assert cfg[group][key] == value, f"{group}.{key}"
    for section, values in own_values.items():
        for key, value in values.items():
            assert cfg[section][key] == value, f"{section}.{key}"


def test_compose_config_2_values():
    cfg = compose_config("+experiment=config_2")

    assert cfg.optimizer.name == "momentum"
    assert cfg.optimizer.lr == 0.0025
    assert cfg.optimizer.momentum == 0.9
    assert cfg.schedule.name == "constant"
    assert cfg.batch_size.size == 100
    assert cfg.train.epochs == 15
    assert cfg.data.val_size == 0


def test_compose_config_3_values():
    cfg = compose_config("+experiment=config_3")

    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == 0.005
    assert cfg.schedule.name == "plateau"
    assert cfg.schedule.monitor == "test/accuracy"
    assert cfg.schedule.decay_factor == 0.75
    assert cfg.schedule.threshold == 0.001
    assert cfg.batch_size.size == 10
    assert cfg.train.epochs == 15


def test_compose_experiment_then_command_line_override_wins():
    cfg = compose_config("+experiment=config_1", "optimizer.lr=0.5", "train.epochs=2")

    assert cfg.optimizer.lr == 0.5
    assert cfg.train.epochs == 2
    assert cfg.batch_size.size == 100


@pytest.mark.parametrize("text, expected", [("1", 1.0), ("1e-3", 0.001), ("0.25", 0.25)])
def test_compose_lr_arrives_as_float(text, expected):
    cfg = compose_config(f"optimizer.lr={text}")

    assert isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.lr == expected


def test_compose_full_batch_is_none():
    cfg = compose_config("batch_size=full")

    assert cfg.batch_size.size is None
    validate(cfg)


@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=abc", "train.epochs=1.5", "batch_size.size=ten", "data.val_size=x"],
)
def test_compose_rejects_wrong_type(override):
    with pytest.raises(ConfigCompositionException, match=re.escape(override)) as raised:
        compose_config(override)

    assert isinstance(raised.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    "override",
    ["optimizer.foo=1", "train.epoch=3", "optimizer.momentum=0.5", "schedule.monitor=x"],
)
def test_compose_rejects_unknown_key(override):
    key = override.split("=")[0]

    with pytest.raises(ConfigCompositionException, match=f"Could not override '{key}'"):
        compose_config(override)


LR_RULE = "optimizer.lr must be > 0 and at most 3.4e38 (float32's largest number)"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.lr=0"], f"{LR_RULE}, got 0.0; for example optimizer.lr=0.01"),
        (["optimizer.lr=-1"], f"{LR_RULE}, got -1.0; for example optimizer.lr=0.01"),
        (["optimizer.lr=1e40"], f"{LR_RULE}, got 1e+40; for example optimizer.lr=0.01"),
        (["+foo=1"], "foo is not a config key (added with +?)"),
        (["+train.epoch=3"], "train.epoch is not a config key (added with +?); train has epochs"),
        (
            ["+optimizer.momentum=0.9"],
            "optimizer.momentum is not a setting of optimizer=sgd (its settings: lr); "
            "it belongs to optimizer=momentum or nesterov",
        ),
        (
            ["+schedule.decay_factor=0.5"],
            "schedule.decay_factor is not a setting of schedule=constant (its settings: none)",
        ),
        (
            ["batch_size.size=0"],
            "batch_size.size must be >= 1 (or null for full batch), got 0; "
            "for example batch_size=bs100 or batch_size.size=32",
        ),
        (
            ["batch_size.size=60000", "data.val_size=5000"],
            "batch_size.size must be at most the 55000 training samples "
            "(60000 minus data.val_size=5000), got 60000; "
            "use batch_size=full for one batch of everything",
        ),
        (
            ["optimizer=momentum", "optimizer.momentum=1"],
            "optimizer.momentum must be in [0, 1), got 1.0; for example optimizer.momentum=0.9",
        ),
        (
            ["optimizer=adam", "optimizer.beta2=1"],
            "optimizer.beta2 must be in [0, 1), got 1.0; for example optimizer.beta2=0.999",
        ),
        (
            ["schedule=plateau", "schedule.decay_factor=0"],
            "schedule.decay_factor must be in (0, 1], got 0.0; "
            "for example schedule.decay_factor=0.75",
        ),
        (
            ["schedule=exponential", "schedule.decay_factor=1.5"],
            "schedule.decay_factor must be in (0, 1], got 1.5; "
            "for example schedule.decay_factor=0.75",
        ),
        (["train.epochs=0"], "train.epochs must be >= 1, got 0; for example train.epochs=10"),
        (
            ["data.val_size=60000"],
            "data.val_size must be in [0, 60000), got 60000; for example data.val_size=5000",
        ),
        (
            ["schedule=plateau", "data.val_size=0"],
            "schedule.monitor=val/accuracy needs a validation split but data.val_size=0; "
            "set data.val_size=5000, or schedule.monitor=train/accuracy",
        ),
        (
            ["schedule=plateau", "schedule.monitor=val/acc"],
            "schedule.monitor must be one of train/accuracy, train/loss, val/accuracy, "
            "val/loss, test/accuracy, test/loss, got 'val/acc'; "
            "for example schedule.monitor=val/accuracy",
        ),
        (
            ["model.init=uniform"],
            "model.init must be 'zeros' or 'normal', got 'uniform'; for example model.init=zeros",
        ),
        (
            ["tracking.experiment=''"],
            "tracking.experiment must not be empty, got ''; "
            "for example tracking.experiment=mnist-lr",
        ),
    ],
)
def test_validate_rejects_out_of_range_value(overrides, message):
    cfg = compose_config(*overrides)

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_validate_reports_every_problem_at_once():
    cfg = compose_config("optimizer.lr=0", "train.epochs=0", "batch_size.size=0")

    with pytest.raises(ConfigError) as raised:
        validate(cfg)

    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid config:"
    assert [line.split()[0] for line in lines[1:]] == [
        "optimizer.lr",
        "batch_size.size",
        "train.epochs",
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["batch_size.size=55000"],
        ["batch_size.size=60000", "data.val_size=0"],
        ["schedule=plateau", "data.val_size=0", "schedule.monitor=train/accuracy"],
        ["optimizer=momentum", "optimizer.momentum=0"],
        ["schedule=step", "schedule.decay_factor=1"],
        ["data.val_size=0"],
    ],
)
def test_validate_accepts_values_on_the_boundary(overrides):
    validate(compose_config(*overrides))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
