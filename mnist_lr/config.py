"""The typed config schema, registered with Hydra's ConfigStore, and its range checks.

Types and unknown keys are enforced by OmegaConf when Hydra composes the config; ranges are
checked by ``validate`` before any run is created, so a bad value costs no MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

N_TRAIN_IMAGES = 60_000
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"


@dataclass
class MomentumConfig(OptimizerConfig):
    name: str = "momentum"
    momentum: float = 0.9


@dataclass
class NesterovConfig(MomentumConfig):
    name: str = "nesterov"


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    name: str = MISSING


@dataclass
class ConstantConfig(ScheduleConfig):
    name: str = "constant"


@dataclass
class PlateauConfig(ScheduleConfig):
    name: str = "plateau"
    decay_factor: float = 0.75
    threshold: float = 0.001
    monitor: str = "val/accuracy"


@dataclass
class StepConfig(ScheduleConfig):
    name: str = "step"
    decay_factor: float = 0.5
    step_epochs: int = 5


@dataclass
class ExponentialConfig(ScheduleConfig):
    name: str = "exponential"
    decay_factor: float = 0.9


@dataclass
class CosineConfig(ScheduleConfig):
    name: str = "cosine"
    min_lr: float = 0.0


@dataclass
class BatchSizeConfig:
    size: int | None = 100  # None: the whole training set


@dataclass
class ModelConfig:
    init: str = "zeros"
    init_scale: float = 0.01


@dataclass
class TrainConfig:
    epochs: int = 10
    weight_decay: float = 0.0


@dataclass
class DataConfig:
    dir: str | None = None
    download: bool = True
    val_size: int = 5000
    val_seed: int = 0


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "mnist-lr"
    run_name: str | None = None


@dataclass
class ReferenceConfig:
    """The published result a configuration should reproduce (reference experiments)."""

    best_test_accuracy: float = MISSING
    best_test_accuracy_epoch: int = MISSING
    best_test_loss_sum: float = MISSING
    best_test_loss_epoch: int = MISSING


@dataclass
class Config:
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    batch_size: BatchSizeConfig = field(default_factory=BatchSizeConfig)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    reference: ReferenceConfig | None = None
    resume: str | None = None  # run id of a KILLED or FAILED run to continue
    restart: bool = False  # in a rerun sweep: run every job afresh instead of skipping


SCHEMAS = {
    "optimizer": {
        "sgd": SGDConfig,
        "momentum": MomentumConfig,
        "nesterov": NesterovConfig,
        "adam": AdamConfig,
    },
    "schedule": {
        "constant": ConstantConfig,
        "plateau": PlateauConfig,
        "step": StepConfig,
        "exponential": ExponentialConfig,
        "cosine": CosineConfig,
    },
}


def register_configs() -> None:
    """Make ``config_schema`` and ``<option>_schema`` available to the YAML defaults lists."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=group, name=f"{option}_schema", node=schema)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, rule, value and a fix."""


# key, rule as the user reads it, check, suggested fix
_RULES: list[tuple[str, str, Any, str]] = [
    (
        "optimizer.lr",
        "must be > 0 and at most 3.4e38 (float32's largest number)",
        lambda v: 0 < v <= FLOAT32_MAX,
        "optimizer.lr=0.01",
    ),
    ("optimizer.momentum", "must be in [0, 1)", lambda v: 0 <= v < 1, "optimizer.momentum=0.9"),
    ("optimizer.beta1", "must be in [0, 1)", lambda v: 0 <= v < 1, "optimizer.beta1=0.9"),
    ("optimizer.beta2", "must be in [0, 1)", lambda v: 0 <= v < 1, "optimizer.beta2=0.999"),
    ("optimizer.eps", "must be > 0", lambda v: v > 0, "optimizer.eps=1e-8"),
    (
        "schedule.decay_factor",
        "must be in (0, 1]",
        lambda v: 0 < v <= 1,
        "schedule.decay_factor=0.75",
    ),
    ("schedule.threshold", "must be >= 0", lambda v: v >= 0, "schedule.threshold=0.001"),
    ("schedule.step_epochs", "must be >= 1", lambda v: v >= 1, "schedule.step_epochs=5"),
    ("schedule.min_lr", "must be >= 0", lambda v: v >= 0, "schedule.min_lr=0"),
    (
        "batch_size.size",
        "must be >= 1 (or null for full batch)",
        lambda v: v is None or v >= 1,
        "batch_size=bs100 or batch_size.size=32",
    ),
    ("train.epochs", "must be >= 1", lambda v: v >= 1, "train.epochs=10"),
    ("train.weight_decay", "must be >= 0", lambda v: v >= 0, "train.weight_decay=0.0001"),
    (
        "model.init",
        "must be 'zeros' or 'normal'",
        lambda v: v in ("zeros", "normal"),
        "model.init=zeros",
    ),
    ("model.init_scale", "must be > 0", lambda v: v > 0, "model.init_scale=0.01"),
    (
        "data.val_size",
        f"must be in [0, {N_TRAIN_IMAGES})",
        lambda v: 0 <= v < N_TRAIN_IMAGES,
        "data.val_size=5000",
    ),
    (
        "tracking.experiment",
        "must not be empty",
        lambda v: bool(v.strip()),
        "tracking.experiment=mnist-lr",
    ),
]

MONITORS = (
    "train/accuracy", "train/loss", "val/accuracy", "val/loss", "test/accuracy", "test/loss",
)  # fmt: skip


def validate(cfg: DictConfig) -> None:
    """Check every range rule, then the rules that tie keys together; raise ConfigError."""
    problems = []
    for key, rule, check, fix in _RULES:
        section, name = key.split(".")
        if name not in cfg[section]:
            continue
        value = cfg[section][name]
        if not check(value):
            problems.append(f"{key} {rule}, got {value!r}; for example {fix}")
    problems += _unknown_keys(cfg)
    problems += _cross_checks(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys the schema does not know: added with ``+``, or a setting of another option
    (``+optimizer.momentum=0.9`` with ``optimizer=sgd``)."""
    problems = [
        f"{key} is not a config key (added with +?); check the spelling, "
        "python -m mnist_lr.run --help lists every key"
        for key in cfg
        if key not in Config.__dataclass_fields__ and key != "hydra"  # Hydra's own, if kept
    ]
    sections = {f.name: f.default_factory for f in fields(Config) if callable(f.default_factory)}
    sections["reference"] = ReferenceConfig
    for section, schema in sections.items():
        if isinstance(cfg.get(section), DictConfig):
            known = {f.name for f in fields(schema)}
            problems += [
                f"{section}.{key} is not a config key (added with +?); "
                f"{section} has {', '.join(sorted(known))}"
                for key in cfg[section]
                if key not in known
            ]
    for group, options in SCHEMAS.items():
        chosen = cfg[group].name
        known = {f.name for f in fields(options.get(chosen, OptimizerConfig))}
        for key in cfg[group]:
            if key not in known:
                owners = [
                    name for name, schema in options.items() if key in schema.__dataclass_fields__
                ]
                where = f"; it belongs to {group}={' or '.join(owners)}" if owners else ""
                settings = ", ".join(sorted(known - {"name"})) or "none"
                problems.append(
                    f"{group}.{key} is not a setting of {group}={chosen} "
                    f"(its settings: {settings}){where}"
                )
    return problems


def _cross_checks(cfg: DictConfig) -> list[str]:
    problems = []
    n_train = N_TRAIN_IMAGES - cfg.data.val_size
    size = cfg.batch_size.size
    if size is not None and 0 <= cfg.data.val_size < N_TRAIN_IMAGES and size > n_train:
        problems.append(
            f"batch_size.size must be at most the {n_train} training samples "
            f"(60000 minus data.val_size={cfg.data.val_size}), got {size}; "
            "use batch_size=full for one batch of everything"
        )
    monitor = cfg.schedule.get("monitor")
    if monitor is not None:
        if monitor not in MONITORS:
            problems.append(
                f"schedule.monitor must be one of {', '.join(MONITORS)}, got {monitor!r}; "
                "for example schedule.monitor=val/accuracy"
            )
        elif monitor.startswith("val/") and cfg.data.val_size == 0:
            problems.append(
                f"schedule.monitor={monitor} needs a validation split but data.val_size=0; "
                "set data.val_size=5000, or schedule.monitor=train/accuracy"
            )
    return problems
