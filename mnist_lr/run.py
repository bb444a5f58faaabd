"""Entry point: ``python -m mnist_lr.run [overrides]`` trains one config and tracks it.

Hydra composes the config from ``conf/``; this module wires it to the data, the trainer
and MLflow. Reads top to bottom as the steps of a run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

from mnist_lr import tracking
from mnist_lr.checkpoint import load_state, save_state
from mnist_lr.config import ConfigError, register_configs, validate
from mnist_lr.data import (
    DATA_DIR_ENV,
    MNIST_SHA256,
    DataError,
    cache_data_dir,
    load_mnist,
    split_validation,
)
from mnist_lr.model import Params, init_params, predict
from mnist_lr.optimizers import make_optimizer
from mnist_lr.schedules import make_schedule
from mnist_lr.sweep import JOB_TAG, read_handoff, write_outcome
from mnist_lr.trainer import DivergenceError, EpochResult, TrainState, fit

logger = logging.getLogger("mnist_lr")
SOURCE_DIR = Path(__file__).resolve().parent.parent
CONFIG_GROUPS = ("optimizer", "schedule", "batch_size", "experiment")
CHECKPOINT_FILE = "state.npz"
EPOCH_METRICS = [
    "train/loss", "train/accuracy", "val/loss", "val/accuracy", "test/loss", "test/accuracy",
    "learning_rate", "epoch_seconds", "eval_seconds",
]  # fmt: skip


@dataclass
class Store:
    """Where this run is recorded: the client, experiment and (in a sweep) parent run."""

    client: MlflowClient
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None


def train(
    cfg: DictConfig, launch_dir: Path, store: Store | None = None, resume_run_id: str | None = None
) -> dict[str, float]:
    """Train ``cfg`` and record it as one MLflow run; returns the run's summary metrics.

    ``store`` is given by a sweep job (the launching process made it); ``resume_run_id``
    continues that KILLED or FAILED run from its last checkpoint, in the same run."""
    validate(cfg)
    mnist = load_mnist(resolve_data_dir(cfg.data.dir, launch_dir), download=cfg.data.download)
    eval_sets = evaluation_sets(mnist, cfg)
    store = store or open_store(cfg, launch_dir)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    state, history = restore(store, resume_run_id, output_dir)

    with open_run(store, cfg, resume_run_id) as run:
        if resume_run_id is None:
            run.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
            run.log_params(dataset_sizes(eval_sets))
            run.set_tags(tracking.reproducibility_tags(SOURCE_DIR, mnist.sha256))
            run.set_tags({tracking.CONFIG_KEY_TAG: config_key(cfg)})
            log_source_diff(run)
            log_hydra_files(run)

        def record_epoch(result: EpochResult, state: TrainState) -> None:
            # Metrics and checkpoint land together or not at all: an interrupt between
            # them would make a resumed run log an epoch twice.
            with interrupts_deferred():
                history.append({"epoch": result.epoch, **result.metrics})
                run.log_metrics(result.metrics, step=result.epoch)
                save_state(state, output_dir / CHECKPOINT_FILE)
                run.log_artifact(output_dir / CHECKPOINT_FILE, "checkpoint")

        params = (
            state.params if state else init_params(cfg.model.init, cfg.seed, cfg.model.init_scale)
        )
        train_images, train_labels = eval_sets["train"]
        fit(
            train_images,
            train_labels,
            eval_sets,
            params=params,
            optimizer=make_optimizer(**optimizer_options(cfg)),
            schedule=make_schedule(**schedule_options(cfg)),
            batch_size=cfg.batch_size.size,
            epochs=cfg.train.epochs,
            seed=cfg.seed,
            weight_decay=cfg.train.weight_decay,
            state=state,
            on_epoch=record_epoch,
            on_progress=progress_bar(cfg.train.epochs),
        )
        summary = summarize(history)
        run.log_metrics(summary, step=cfg.train.epochs)
        log_outputs(run, history, params, describe(cfg), test_set=eval_sets["test"])
    if store.parent_run_id is None:
        announce(summary, store.tracking_uri, store.experiment_id, run.run_id)
    return summary


def evaluation_sets(mnist, cfg: DictConfig) -> dict:
    """``train`` (after the hold-out), ``val`` when ``data.val_size`` > 0, and ``test``."""
    split = split_validation(
        mnist.train_images, mnist.train_labels, cfg.data.val_size, cfg.data.val_seed
    )
    eval_sets = {"train": (split.train_images, split.train_labels)}
    if split.val_images is not None:
        eval_sets["val"] = (split.val_images, split.val_labels)
    eval_sets["test"] = (mnist.test_images, mnist.test_labels)
    return eval_sets


def open_store(cfg: DictConfig, launch_dir: Path) -> Store:
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, launch_dir)
    client, experiment_id = tracking.open_experiment(
        tracking_uri, cfg.tracking.experiment, launch_dir
    )
    return Store(client, tracking_uri, experiment_id)


def open_run(store: Store, cfg: DictConfig, resume_run_id: str | None):
    if resume_run_id is not None:
        return tracking.reopen_run(store.client, resume_run_id)
    return tracking.start_run(
        store.client, store.experiment_id, run_name(cfg), run_tags(cfg), store.parent_run_id
    )


def restore(
    store: Store, resume_run_id: str | None, folder: Path
) -> tuple[TrainState | None, list[dict[str, float]]]:
    """The last checkpoint of the run being resumed and its metrics so far, or a fresh
    start (no checkpoint: the run stopped before its first epoch ended)."""
    if resume_run_id is None:
        return None, []
    path = tracking.download_artifact(
        store.client, resume_run_id, f"checkpoint/{CHECKPOINT_FILE}", folder / "resumed"
    )
    if path is None:
        return None, []
    state = load_state(path)
    history = tracking.metric_rows(store.client, resume_run_id, EPOCH_METRICS, state.epoch)
    logger.info("resuming run %s after epoch %d", resume_run_id, state.epoch)
    return state, [row for row in history if len(row) > 1]


def config_key(cfg: DictConfig) -> str:
    """Equal for two jobs with the same resolved config, code commit and data."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["tracking"].pop("run_name", None)
    config.pop("resume", None)
    config.pop("restart", None)
    commit = tracking.git_commit(SOURCE_DIR) or ""
    text = json.dumps([config, commit, sorted(MNIST_SHA256.items())], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_sizes(eval_sets: dict) -> dict[str, int]:
    return {f"dataset.n_{split}": len(labels) for split, (_, labels) in eval_sets.items()}


def progress_bar(epochs: int, stream=None):
    """``on_progress`` drawing a bar over each epoch's samples on a terminal; None (no
    bar, nothing to call) when the output is a log, a pipe or CI."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    from tqdm import tqdm

    bar = None

    def update(epoch: int, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="img", leave=False,
                       file=stream)  # fmt: skip
        bar.update(done - bar.n)
        if done == total:
            bar.close()
            bar = None

    return update


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM until the block is done; they are delivered right after."""
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def resolve_data_dir(configured: str | None, launch_dir: Path) -> Path:
    """``data.dir``, else ``$MNIST_LR_DATA_DIR``, else the cache; relative to the launch.
    A folder the user named must exist (a typo should not become a new, empty folder);
    the cache is created as needed."""
    from_env = os.environ.get(DATA_DIR_ENV)
    named = configured or from_env
    folder = launch_dir / Path(named or cache_data_dir()).expanduser()
    if named and not folder.is_dir():
        source = f"data.dir={configured}" if configured else f"${DATA_DIR_ENV}={from_env}"
        raise DataError(
            f"{source}: the folder {folder} does not exist. Point it at the folder that holds "
            "the four MNIST files, or unset it to use (and download into) the cache "
            f"{cache_data_dir()}"
        )
    return folder


def optimizer_options(cfg: DictConfig) -> dict:
    options = OmegaConf.to_container(cfg.optimizer, resolve=True)
    options.pop("lr")
    return options


def schedule_options(cfg: DictConfig) -> dict:
    options = OmegaConf.to_container(cfg.schedule, resolve=True)
    options["learning_rate"] = cfg.optimizer.lr
    if options["name"] == "cosine":
        options["epochs"] = cfg.train.epochs
    return options


def describe(cfg: DictConfig) -> str:
    """A short readable description of the config, used as the run name and plot title."""
    size = cfg.batch_size.size if cfg.batch_size.size is not None else "full"
    parts = [cfg.optimizer.name, f"lr{cfg.optimizer.lr:g}", f"bs{size}", cfg.schedule.name]
    if cfg.optimizer.get("momentum") is not None:
        parts.insert(1, f"mu{cfg.optimizer.momentum:g}")
    return "-".join(str(part) for part in parts)


def run_name(cfg: DictConfig) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    experiment = group_choices().get("experiment")
    name = describe(cfg) + f"-seed{cfg.seed}"
    return f"{experiment}:{name}" if experiment else name


def group_choices() -> dict[str, str]:
    """The option chosen in each of our config groups, from Hydra's runtime record."""
    choices = HydraConfig.get().runtime.choices
    return {group: choices[group] for group in CONFIG_GROUPS if choices.get(group)}


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The override string and each group choice as its own tag, for filtering."""
    hydra_cfg = HydraConfig.get()
    tags = {group: choice for group, choice in group_choices().items()}
    tags["overrides"] = " ".join(hydra_cfg.overrides.task) or "(defaults)"
    if hydra_cfg.mode.name == "MULTIRUN":
        tags[JOB_TAG] = str(hydra_cfg.job.num)
    tags["mlflow.source.name"] = "mnist_lr.run"
    return tags


def log_source_diff(run: tracking.Run) -> None:
    diff = tracking.git_diff(SOURCE_DIR)
    if diff:
        run.log_text(diff + "\n", "source/git.diff")


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Best test accuracy and its epoch, the same for validation, and the test accuracy at
    the best validation epoch (the honest figure when choosing by validation)."""
    summary = _best(history, "test")
    if "val/accuracy" in history[0]:
        summary |= _best(history, "val")
        best_val = max(history, key=lambda row: row["val/accuracy"])
        summary["best/test_accuracy_at_best_val"] = best_val["test/accuracy"]
    summary["final/test_accuracy"] = history[-1]["test/accuracy"]
    summary["train_seconds"] = sum(row["epoch_seconds"] for row in history)
    return summary


def _best(history: list[dict[str, float]], split: str) -> dict[str, float]:
    best = max(history, key=lambda row: row[f"{split}/accuracy"])
    return {
        f"best/{split}_accuracy": best[f"{split}/accuracy"],
        f"best/{split}_epoch": best["epoch"],
    }


# TODO: tracking costs about 6 s per run whatever its length (MLflow import, a new store, five
# figures, the model), 3.5x a 15-epoch batch-100 run against issue 5's 10% target; optional
# figures and model in sweeps, or logging from another process, would move it.
def log_outputs(
    run: tracking.Run,
    history: list[dict[str, float]],
    params: Params,
    title: str,
    test_set: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Metric history, weights, plots, Hydra's config record and the job's log file.

    With ``test_set`` (images ``(n, 784)``, labels ``(n,)``) the plots include the weight
    templates, the confusion matrix and the misclassified images. The model is logged
    as ``model``, a pyfunc model (see mnist_lr.serving)."""
    from mnist_lr import serving
    from mnist_lr.plots import save_curves, save_model_pictures

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_history(history, folder / "metrics.csv")
        run.log_artifact(folder / "metrics.csv")
        np.savez(folder / "weights.npz", weights=params.weights, bias=params.bias)
        run.log_artifact(folder / "weights.npz")
        for path in save_curves(history, title, folder / "plots"):
            run.log_artifact(path, "plots")
        if test_set is not None:
            images, labels = test_set
            pictures = save_model_pictures(
                params.weights, images, labels, predict(params, images), title, folder / "plots"
            )
            for path in pictures:
                run.log_artifact(path, "plots")
        examples = test_set[0][:2] if test_set is not None else np.zeros((1, 784), np.float32)
        tracking.log_pyfunc_model(run, serving.model_options(folder / "weights.npz", examples))
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = output_dir / f"{HydraConfig.get().job.name}.log"
    if log_file.is_file():
        run.log_artifact(log_file, "logs")


def log_hydra_files(run: tracking.Run) -> None:
    """Hydra's record of the job (config.yaml, hydra.yaml, overrides.yaml), logged at the
    start so even a killed run can be resumed from its own config."""
    hydra_dir = Path(HydraConfig.get().runtime.output_dir) / ".hydra"
    if hydra_dir.is_dir():
        run.log_artifacts(hydra_dir, "hydra")


def write_history(history: list[dict[str, float]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def announce(summary: dict[str, float], tracking_uri: str, experiment_id: str, run_id: str):
    logger.info(
        "best test accuracy %.4f at epoch %d; run %s",
        summary["best/test_accuracy"],
        summary["best/test_epoch"],
        run_id,
    )
    logger.info("browse it: %s", tracking.browse_hint(tracking_uri))
    logger.info("then open %s", tracking.experiment_url(tracking_uri, experiment_id, run_id))


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    launch_dir = Path(hydra.utils.get_original_cwd())
    if HydraConfig.get().mode.name == "MULTIRUN":
        return run_sweep_job(cfg, launch_dir)
    try:
        if cfg.resume:
            cfg, store = resumed_config(cfg, launch_dir)
            summary = train(cfg, launch_dir, store, resume_run_id=cfg.resume)
        else:
            summary = train(cfg, launch_dir)
    except (ConfigError, DataError, tracking.TrackingError, DivergenceError) as error:
        logger.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted; the run is KILLED with its finished epochs kept")
        sys.exit(130)
    return objective(summary)


def resumed_config(cfg: DictConfig, launch_dir: Path) -> tuple[DictConfig, Store]:
    """The config a KILLED or FAILED run was started with (its own ``hydra/config.yaml``),
    tracked in the store the current config names."""
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri, launch_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            f"resume={cfg.resume}: there is no MLflow store at {uri}; run the command in the "
            "folder you trained in, or name the store with tracking.uri=..."
        )
    ignored = [
        o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "tracking."))
    ]
    if ignored:
        logger.warning(
            "resume continues the run with its own config; ignoring %s", " ".join(ignored)
        )
    store = open_store(cfg, launch_dir)
    status = tracking.run_status(store.client, cfg.resume)
    if status is None:
        raise ConfigError(
            f"resume={cfg.resume}: no such run in {store.tracking_uri}; give the id of a "
            "KILLED or FAILED run (mlflow ui shows it), with the same tracking.uri"
        )
    if status == "FINISHED":
        raise ConfigError(f"resume={cfg.resume}: that run is FINISHED; there is nothing to resume")
    if status == "RUNNING":
        logger.warning(
            "run %s is marked RUNNING; if it is alive elsewhere, stop it first", cfg.resume
        )
    scratch = Path(HydraConfig.get().runtime.output_dir) / "resumed"
    path = tracking.download_artifact(store.client, cfg.resume, "hydra/config.yaml", scratch)
    if path is None:
        raise ConfigError(f"resume={cfg.resume}: the run has no hydra/config.yaml to resume from")
    resumed = OmegaConf.load(path)
    resumed.tracking = cfg.tracking
    resumed.resume = cfg.resume
    return resumed, store


def run_sweep_job(cfg: DictConfig, launch_dir: Path) -> float | None:
    """One job of a multirun: a failure is recorded (child run FAILED, outcome file) and
    the sweep goes on; the launching process reports it when the sweep ends. When the
    sweep is run again, a job whose run FINISHED is skipped and an unfinished one resumes
    (unless ``restart=true``)."""
    hydra_cfg = HydraConfig.get()
    handoff = read_handoff(launch_dir / hydra_cfg.sweep.dir)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        store = Store(tracking.connect(handoff["tracking_uri"]), **handoff)
        previous = (
            None
            if cfg.restart
            else tracking.find_child(
                store.client, store.experiment_id, store.parent_run_id, config_key(cfg)
            )
        )
        if previous is not None and previous.info.status == "FINISHED":
            logger.info(
                "skipping %s: run %s already FINISHED", " ".join(overrides), previous.info.run_id
            )
            write_outcome(output_dir, overrides, None)
            return objective(previous.data.metrics)
        resume_run_id = previous.info.run_id if previous is not None else None
        summary = train(cfg, launch_dir, store, resume_run_id)
    except Exception as error:
        logger.error("job %s failed: %s", " ".join(overrides), error)
        write_outcome(output_dir, overrides, error)
        # None, not NaN: the Optuna sweeper records a None trial as FAILED and goes on,
        # but a NaN makes it raise and end the whole study.
        return None
    write_outcome(output_dir, overrides, None)
    return objective(summary)


def objective(summary: dict[str, float]) -> float | None:
    """What a sweeper maximises: the best validation accuracy, never a test metric (None
    without a validation split)."""
    return summary.get("best/val_accuracy")


def check_group_overrides(arguments: list[str]) -> str | None:
    """Hydra answers ``batch_size=32`` with a traceback about ints; say what to type."""
    for argument in arguments:
        group, _, value = argument.partition("=")
        if group.lstrip("+") in ("optimizer", "schedule", "batch_size") and value.isdigit():
            hint = (
                f"batch_size.size={value} for any size, or one of bs1, bs10, bs100, bs1000, full"
                if group.lstrip("+") == "batch_size"
                else f"an option name; python -m mnist_lr.run --help lists the {group} options"
            )
            return f"{argument}: {group} is a config group and takes {hint}"
    return None


if __name__ == "__main__":
    problem = check_group_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    # MLflow sets its own loggers' level from this when it is first imported.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
