"""Entry point: ``python -m mnist_lr.run [overrides]`` trains one config and tracks it.

Hydra composes the config from ``conf/``; this module wires it to the data, the trainer
and MLflow. Reads top to bottom as the steps of a run.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnist_lr import tracking
from mnist_lr.config import ConfigError, register_configs, validate
from mnist_lr.data import DataError, default_data_dir, load_mnist, split_validation
from mnist_lr.model import Params, init_params, predict
from mnist_lr.optimizers import make_optimizer
from mnist_lr.plots import save_curves, save_model_pictures
from mnist_lr.schedules import make_schedule
from mnist_lr.sweep import read_handoff, write_outcome
from mnist_lr.trainer import DivergenceError, EpochResult, TrainState, fit

logger = logging.getLogger("mnist_lr")
SOURCE_DIR = Path(__file__).resolve().parent.parent
CONFIG_GROUPS = ("optimizer", "schedule", "batch_size", "experiment")


def train(cfg: DictConfig, launch_dir: Path, sweep: dict | None = None) -> dict[str, float]:
    """Train ``cfg`` and record it as one MLflow run; returns the run's summary metrics.

    ``sweep`` is the launching process's handoff when this is a job of a multirun: the
    store, experiment and parent run it already created."""
    validate(cfg)
    mnist = load_mnist(resolve_data_dir(cfg.data.dir, launch_dir), download=cfg.data.download)
    split = split_validation(
        mnist.train_images, mnist.train_labels, cfg.data.val_size, cfg.data.val_seed
    )
    eval_sets = {"train": (split.train_images, split.train_labels)}
    if split.val_images is not None:
        eval_sets["val"] = (split.val_images, split.val_labels)
    eval_sets["test"] = (mnist.test_images, mnist.test_labels)

    if sweep is None:
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, launch_dir)
        client, experiment_id = tracking.open_experiment(
            tracking_uri, cfg.tracking.experiment, launch_dir
        )
        parent_run_id = None
    else:
        tracking_uri, experiment_id = sweep["tracking_uri"], sweep["experiment_id"]
        client, parent_run_id = tracking.MlflowClient(tracking_uri), sweep["parent_run_id"]
    history: list[dict[str, float]] = []
    with tracking.start_run(
        client, experiment_id, run_name(cfg), run_tags(cfg), parent_run_id
    ) as run:
        run.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        run.log_params(dataset_sizes(eval_sets))
        run.set_tags(tracking.reproducibility_tags(SOURCE_DIR, mnist.sha256))
        log_source_diff(run)

        def record_epoch(result: EpochResult, state: TrainState) -> None:
            history.append({"epoch": result.epoch, **result.metrics})
            run.log_metrics(result.metrics, step=result.epoch)

        params = init_params(cfg.model.init, cfg.seed, cfg.model.init_scale)
        fit(
            split.train_images,
            split.train_labels,
            eval_sets,
            params=params,
            optimizer=make_optimizer(**optimizer_options(cfg)),
            schedule=make_schedule(**schedule_options(cfg)),
            batch_size=cfg.batch_size.size,
            epochs=cfg.train.epochs,
            seed=cfg.seed,
            weight_decay=cfg.train.weight_decay,
            on_epoch=record_epoch,
        )
        summary = summarize(history)
        run.log_metrics(summary, step=cfg.train.epochs)
        log_outputs(run, history, params, describe(cfg), test_set=eval_sets["test"])
    if parent_run_id is None:
        announce(summary, tracking_uri, experiment_id, run.run_id)
    return summary


def dataset_sizes(eval_sets: dict) -> dict[str, int]:
    return {f"dataset.n_{split}": len(labels) for split, (_, labels) in eval_sets.items()}


def resolve_data_dir(configured: str | None, launch_dir: Path) -> Path:
    """``data.dir``, else ``$MNIST_LR_DATA_DIR``, else the cache; relative to the launch."""
    folder = Path(configured) if configured else default_data_dir()
    return launch_dir / folder.expanduser()


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


def log_outputs(
    run: tracking.Run,
    history: list[dict[str, float]],
    params: Params,
    title: str,
    test_set: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Metric history, weights, plots, Hydra's config record and the job's log file.

    With ``test_set`` (images ``(n, 784)``, labels ``(n,)``) the plots include the weight
    templates, the confusion matrix and the misclassified images."""
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
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if (output_dir / ".hydra").is_dir():
        run.log_artifacts(output_dir / ".hydra", "hydra")
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = output_dir / f"{HydraConfig.get().job.name}.log"
    if log_file.is_file():
        run.log_artifact(log_file, "logs")


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
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode.name == "MULTIRUN":
        return run_sweep_job(cfg, launch_dir)
    try:
        summary = train(cfg, launch_dir)
    except (ConfigError, DataError, tracking.TrackingError, DivergenceError) as error:
        logger.error("%s", error)
        sys.exit(1)
    return objective(summary)


def run_sweep_job(cfg: DictConfig, launch_dir: Path) -> float | None:
    """One job of a multirun: a failure is recorded (child run FAILED, outcome file) and
    the sweep goes on; the launching process reports it when the sweep ends."""
    hydra_cfg = HydraConfig.get()
    handoff = read_handoff(launch_dir / hydra_cfg.sweep.dir)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        summary = train(cfg, launch_dir, handoff)
    except Exception as error:
        logger.error("job %s failed: %s", " ".join(overrides), error)
        write_outcome(output_dir, overrides, error)
        return float("nan")
    write_outcome(output_dir, overrides, None)
    return objective(summary)


def objective(summary: dict[str, float]) -> float | None:
    """What a sweeper maximises: the best validation accuracy, never a test metric (None
    without a validation split)."""
    return summary.get("best/val_accuracy")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
