"""Tests for mnist_lr.tracking: store location, experiment set-up and run lifecycle, on a real
SQLite store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mnist_lr.tracking import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_TAG,
    TrackingError,
    experiment_url,
    flatten,
    open_experiment,
    reproducibility_tags,
    resolve_tracking_uri,
    start_run,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store for the module (creating its tables takes about a second)."""
    folder = tmp_path_factory.mktemp("store").resolve()
    return f"sqlite:///{folder}/mlflow.db", folder


@pytest.fixture
def experiment(store, request) -> tuple[MlflowClient, str]:
    """A client and a fresh experiment named after the test."""
    uri, folder = store
    return open_experiment(uri, request.node.name, folder)


def run_status(client: MlflowClient, run_id: str) -> str:
    return client.get_run(run_id).info.status


# resolve_tracking_uri


@pytest.fixture
def launch_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path.resolve()


@pytest.mark.parametrize(
    "configured, expected",
    [
        ("sqlite:///mlflow.db", "sqlite:///{launch}/mlflow.db"),
        ("sqlite:///runs/store.db", "sqlite:///{launch}/runs/store.db"),
        ("sqlite:///runs/../other.db", "sqlite:///{launch}/other.db"),
        ("sqlite:////srv/mlflow/mlflow.db", "sqlite:////srv/mlflow/mlflow.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example.org/", "https://mlflow.example.org/"),
        ("file:///srv/mlruns", "file:///srv/mlruns"),
        ("mlruns", "file://{launch}/mlruns"),
        ("stores/mlruns", "file://{launch}/stores/mlruns"),
    ],
)
def test_resolve_tracking_uri(launch_dir, configured, expected):
    assert resolve_tracking_uri(configured, launch_dir) == expected.format(launch=launch_dir)


def test_resolve_tracking_uri_defaults_to_sqlite_in_launch_dir(launch_dir):
    assert resolve_tracking_uri(None, launch_dir) == f"sqlite:///{launch_dir}/mlflow.db"


@pytest.mark.parametrize(
    "from_env, expected",
    [
        ("http://mlflow.internal:5000", "http://mlflow.internal:5000"),
        ("sqlite:///shared.db", "sqlite:///{launch}/shared.db"),
        ("sqlite:////data/shared.db", "sqlite:////data/shared.db"),
    ],
)
def test_resolve_tracking_uri_honours_env_without_config(
    launch_dir, monkeypatch, from_env, expected
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", from_env)

    assert resolve_tracking_uri(None, launch_dir) == expected.format(launch=launch_dir)


def test_resolve_tracking_uri_config_beats_env(launch_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")

    assert resolve_tracking_uri("sqlite:///mine.db", launch_dir) == (
        f"sqlite:///{launch_dir}/mine.db"
    )


# flatten


def test_flatten_nested_config():
    config = {
        "optimizer": {"name": "sgd", "lr": 0.1},
        "batch_size": {"size": None},
        "seed": 0,
        "data": {"split": {"val_size": 5000}},
    }

    assert flatten(config) == {
        "optimizer.name": "sgd",
        "optimizer.lr": 0.1,
        "batch_size.size": None,
        "seed": 0,
        "data.split.val_size": 5000,
    }


def test_flatten_prefix_and_empty_sections():
    assert flatten({"a": {}, "b": 1}, prefix="cfg.") == {"cfg.b": 1}


# experiment_url


@pytest.mark.parametrize(
    "tracking_uri, base",
    [
        ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000"),
        ("file:///tmp/mlruns", "http://127.0.0.1:5000"),
        ("http://mlflow.internal:5000/", "http://mlflow.internal:5000"),
    ],
)
def test_experiment_url_opens_model_training_view(tracking_uri, base):
    url = experiment_url(tracking_uri, "7")

    assert url == f"{base}/#/experiments/7/runs?workflowType=machine_learning"


def test_experiment_url_with_run_points_at_the_run():
    url = experiment_url("sqlite:////tmp/mlflow.db", "7", "abc123")

    assert url == "http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning"


# open_experiment


def test_open_experiment_creates_model_training_experiment(store):
    uri, folder = store

    client, experiment_id = open_experiment(uri, "created-here", folder)

    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "created-here"
    assert experiment.lifecycle_stage == "active"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_open_experiment_is_idempotent(store):
    uri, folder = store

    _, first_id = open_experiment(uri, "opened-twice", folder)
    client, second_id = open_experiment(uri, "opened-twice", folder)

    assert first_id == second_id
    matching = client.search_experiments(filter_string="name = 'opened-twice'")
    assert [experiment.experiment_id for experiment in matching] == [first_id]


def test_open_experiment_tags_existing_experiment_without_kind(store):
    uri, folder = store
    existing_id = MlflowClient(uri).create_experiment("made-elsewhere")

    client, experiment_id = open_experiment(uri, "made-elsewhere", folder)

    assert experiment_id == existing_id
    assert client.get_experiment(existing_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_open_experiment_unusable_store_raises_tracking_error(tmp_path):
    # a file stands where the store's folder should be, so nothing can create it
    (tmp_path / "not-a-folder").write_text("")
    uri = f"sqlite:///{tmp_path.resolve()}/not-a-folder/mlflow.db"

    with pytest.raises(TrackingError, match="cannot use the MLflow tracking store") as raised:
        open_experiment(uri, "never", tmp_path)

    assert uri in str(raised.value)
    assert "Check tracking.uri" in str(raised.value)


def test_open_experiment_puts_artifacts_under_launch_dir(tmp_path, monkeypatch):
    launch_dir = (tmp_path / "launch").resolve()
    job_dir = (tmp_path / "outputs" / "job").resolve()
    launch_dir.mkdir()
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)  # where Hydra puts a job with hydra.job.chdir=true

    client, experiment_id = open_experiment(
        f"sqlite:///{launch_dir}/mlflow.db", "artifacts-here", launch_dir
    )

    location = client.get_experiment(experiment_id).artifact_location.removeprefix("file://")
    assert Path(location).is_relative_to(launch_dir / "mlruns")


# start_run


def test_start_run_finishes_on_success(experiment):
    client, experiment_id = experiment

    with start_run(client, experiment_id, "ok", {"optimizer": "sgd"}) as run:
        assert run_status(client, run.run_id) == "RUNNING"

    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "ok"
    assert finished.data.tags["optimizer"] == "sgd"
    assert ERROR_TAG not in finished.data.tags


def test_start_run_fails_with_error_tag_on_exception(experiment):
    client, experiment_id = experiment

    with (
        pytest.raises(ValueError, match="bad value"),
        start_run(client, experiment_id, "broken") as run,
    ):
        raise ValueError("bad value")

    failed = client.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[ERROR_TAG] == "ValueError: bad value"


def test_start_run_killed_on_keyboard_interrupt(experiment):
    client, experiment_id = experiment

    with (
        pytest.raises(KeyboardInterrupt),
        start_run(client, experiment_id, "interrupted") as run,
    ):
        raise KeyboardInterrupt

    killed = client.get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[ERROR_TAG].startswith("interrupted: KeyboardInterrupt")


def test_start_run_never_left_running(experiment):
    client, experiment_id = experiment
    for error in (ValueError("x"), RuntimeError("y"), KeyboardInterrupt()):
        with pytest.raises(type(error)), start_run(client, experiment_id, "any"):
            raise error
    with start_run(client, experiment_id, "any"):
        pass

    runs = client.search_runs([experiment_id])

    assert sorted(run.info.status for run in runs) == ["FAILED", "FAILED", "FINISHED", "KILLED"]


def test_start_run_parent_run_id_sets_parent_tag(experiment):
    client, experiment_id = experiment

    with start_run(client, experiment_id, "sweep") as parent:
        pass
    with start_run(client, experiment_id, "trial", parent_run_id=parent.run_id) as child:
        pass

    assert client.get_run(child.run_id).data.tags[PARENT_RUN_TAG] == parent.run_id
    assert PARENT_RUN_TAG not in client.get_run(parent.run_id).data.tags


# Run


def test_run_log_metrics_logs_every_key_at_step(experiment):
    client, experiment_id = experiment
    metrics = {"train/loss": 0.5, "test/accuracy": 0.9, "learning_rate": np.float32(0.25)}

    with start_run(client, experiment_id, "metrics") as run:
        run.log_metrics(metrics, step=3)
        run.log_metrics({"train/loss": 0.25}, step=4)

    history = {key: client.get_metric_history(run.run_id, key) for key in metrics}
    assert {key: [(m.step, m.value) for m in values] for key, values in history.items()} == {
        "train/loss": [(3, 0.5), (4, 0.25)],
        "test/accuracy": [(3, 0.9)],
        "learning_rate": [(3, 0.25)],
    }


def test_run_log_params_and_tags_are_strings(experiment):
    client, experiment_id = experiment

    with start_run(client, experiment_id, "params") as run:
        run.log_params(flatten({"optimizer": {"lr": 0.1}, "batch_size": {"size": None}}))
        run.set_tags({"git.dirty": False})

    data = client.get_run(run.run_id).data
    assert data.params == {"optimizer.lr": "0.1", "batch_size.size": "None"}
    assert data.tags["git.dirty"] == "False"


def test_run_log_text_and_artifact(experiment, tmp_path):
    client, experiment_id = experiment
    (tmp_path / "notes.txt").write_text("hello\n")

    with start_run(client, experiment_id, "artifacts") as run:
        run.log_text("diff\n", "source/git.diff")
        run.log_artifact(tmp_path / "notes.txt", "extra")

    paths = {item.path for item in client.list_artifacts(run.run_id, "extra")}
    paths |= {item.path for item in client.list_artifacts(run.run_id, "source")}
    assert paths == {"extra/notes.txt", "source/git.diff"}


# reproducibility_tags


def test_reproducibility_tags_outside_git(tmp_path):
    tags = reproducibility_tags(tmp_path, {"train-labels-idx1-ubyte": "ab" * 32})

    assert tags["data.sha256.train-labels-idx1-ubyte"] == "ab" * 32
    assert set(tags) >= {"version.numpy", "version.mlflow", "version.hydra-core"}
    assert "mlflow.source.git.commit" not in tags


def test_reproducibility_tags_in_this_repository():
    tags = reproducibility_tags(Path(__file__).resolve().parent.parent, {})

    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["git.dirty"] in ("True", "False")
