"""Tests for mnist_lr.run: the entry point as a user runs it, on real MNIST, read back from
the MLflow store it wrote."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.mnist

EPOCH_METRICS = [
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "test/loss",
    "test/accuracy",
    "learning_rate",
    "epoch_seconds",
]
EXPECTED_ARTIFACTS = {
    "plots/loss.png",
    "plots/accuracy.png",
    "weights.npz",
    "metrics.csv",
    "hydra/config.yaml",
    "logs/run.log",
}


def run_entry_point(
    *overrides: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m mnist_lr.run OVERRIDES`` launched from ``cwd``, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_lr.run", *overrides],
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


def all_artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for entry in client.list_artifacts(run_id, folder):
        if entry.is_dir:
            paths |= all_artifacts(client, run_id, entry.path)
        else:
            paths.add(entry.path)
    return paths


def only_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-lr")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def two_epoch_run(mnist_dir, tmp_path_factory):
    """One default run (SGD, lr 0.1, batches of 100) of two epochs, tracked in a new store."""
    folder = tmp_path_factory.mktemp("launch").resolve()
    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    completed = run_entry_point(
        "train.epochs=2", f"tracking.uri={tracking_uri}", f"data.dir={mnist_dir}", cwd=folder
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    client, run = only_run(tracking_uri)
    return client, run, folder


def test_run_finishes_with_one_run(two_epoch_run):
    _, run, _ = two_epoch_run

    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("key", EPOCH_METRICS)
def test_run_logs_each_epoch_metric_at_steps_1_and_2(two_epoch_run, key):
    client, run, _ = two_epoch_run

    history = client.get_metric_history(run.info.run_id, key)

    assert sorted(metric.step for metric in history) == [1, 2]
    assert all(np.isfinite(metric.value) for metric in history)


def test_run_reaches_test_accuracy_above_085(two_epoch_run):
    client, run, _ = two_epoch_run

    history = client.get_metric_history(run.info.run_id, "test/accuracy")

    assert [metric.value for metric in history if metric.step == 2][0] > 0.85


def test_run_records_params_and_group_tags(two_epoch_run):
    _, run, _ = two_epoch_run

    assert run.data.params["optimizer.lr"] == "0.1"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["optimizer"] == "sgd"
    assert run.data.tags["schedule"] == "constant"
    assert run.data.tags["batch_size"] == "bs100"


def test_run_logs_artifacts(two_epoch_run):
    client, run, _ = two_epoch_run

    assert all_artifacts(client, run.info.run_id) >= EXPECTED_ARTIFACTS


def test_run_artifact_contents(two_epoch_run, tmp_path):
    client, run, _ = two_epoch_run
    run_id = run.info.run_id

    weights = np.load(client.download_artifacts(run_id, "weights.npz", str(tmp_path)))
    metrics_csv = Path(client.download_artifacts(run_id, "metrics.csv", str(tmp_path)))
    run_log = Path(client.download_artifacts(run_id, "logs/run.log", str(tmp_path)))

    assert weights["weights"].shape == (784, 10)
    assert weights["bias"].shape == (10,)
    lines = metrics_csv.read_text().splitlines()
    assert len(lines) == 3
    rows = list(csv.DictReader(lines))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert "epoch=2/2" in run_log.read_text()


def test_run_keeps_launch_folder_for_relative_paths(two_epoch_run):
    _, _, folder = two_epoch_run

    assert (folder / "mlflow.db").is_file()
    assert (folder / "outputs").is_dir()


def test_run_default_store_lands_in_launch_folder(mnist_dir, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}

    completed = run_entry_point(
        "train.epochs=1", f"data.dir={mnist_dir}", "hydra.job.chdir=true", cwd=tmp_path, env=env
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (tmp_path / "mlflow.db").is_file()
    assert not list((tmp_path / "outputs").rglob("mlflow.db"))
    assert not list((tmp_path / "outputs").rglob("mlruns"))
    assert (tmp_path / "mlruns").is_dir()


def test_run_bad_value_exits_before_creating_a_run(mnist_dir, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path.resolve()}/mlflow.db"

    completed = run_entry_point(
        "optimizer.lr=-1", f"tracking.uri={tracking_uri}", f"data.dir={mnist_dir}", cwd=tmp_path
    )

    assert completed.returncode != 0
    assert "optimizer.lr must be > 0" in completed.stdout + completed.stderr
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(tracking_uri)
        experiments = client.search_experiments()
        assert client.search_runs([e.experiment_id for e in experiments]) == []
