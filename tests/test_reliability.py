"""Faults during a run on real MNIST: divergence, interrupts and resume, an unusable store,
and Hydra's override grammar as users trip over it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.mnist


def _command(tmp_path: Path, mnist_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "mnist_lr.run",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"data.dir={mnist_dir}", *overrides,
    ]  # fmt: skip


def _run(tmp_path, mnist_dir, *overrides, timeout=300):
    """The finished process; ``output`` is stdout and stderr together (Hydra logs to
    stdout, errors go to stderr)."""
    completed = subprocess.run(
        _command(tmp_path, mnist_dir, *overrides),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    completed.output = completed.stdout
    return completed


def _terminate_when(command: list[str], cwd: Path, ready) -> tuple[int, str]:
    """Run ``command``, send SIGTERM once ``ready(output so far)`` holds; the exit code and
    the whole output."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = ""
    for line in process.stdout:
        output += line
        if ready(output):
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            break
    output += process.communicate(timeout=120)[0]
    return process.returncode, output


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-lr")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_divergence_fails_the_run_with_the_reason_and_logs_no_nan(tmp_path, mnist_dir):
    completed = _run(tmp_path, mnist_dir, "optimizer.lr=1e38", "train.epochs=2")

    assert completed.returncode == 1
    assert "training diverged in epoch 1 at learning rate 1e+38" in completed.output
    assert "Lower optimizer.lr" in completed.output
    client, runs = _runs(tmp_path)
    (run,) = runs
    assert run.info.status == "FAILED"
    assert "DivergenceError: training diverged in epoch 1" in run.data.tags["error"]
    assert all(math.isfinite(value) for value in run.data.metrics.values())


def test_sigterm_kills_the_run_and_resume_reaches_the_uninterrupted_metrics(tmp_path, mnist_dir):
    overrides = ("train.epochs=5", "batch_size=bs10", "optimizer=momentum", "optimizer.lr=0.001")
    assert _run(tmp_path, mnist_dir, *overrides).returncode == 0

    returncode, output = _terminate_when(
        _command(tmp_path, mnist_dir, *overrides), tmp_path, lambda seen: "epoch=2/5" in seen
    )
    assert returncode != 0, output

    client, runs = _runs(tmp_path)
    killed = next(r for r in runs if r.info.status != "FINISHED")
    straight = next(r for r in runs if r.info.status == "FINISHED")
    assert killed.info.status == "KILLED"
    finished_epochs = len(_history(client, killed.info.run_id, "test/accuracy"))
    assert 2 <= finished_epochs < 5

    resumed = _run(tmp_path, mnist_dir, f"resume={killed.info.run_id}")
    assert resumed.returncode == 0, resumed.output
    client, runs = _runs(tmp_path)
    assert len(runs) == 2
    assert client.get_run(killed.info.run_id).info.status == "FINISHED"
    for key in ("train/loss", "test/accuracy", "test/loss", "learning_rate"):
        assert _history(client, killed.info.run_id, key) == _history(
            client, straight.info.run_id, key
        )


def test_resume_without_a_store_here_is_refused_and_creates_none(tmp_path, mnist_dir):
    completed = subprocess.run(
        [sys.executable, "-m", "mnist_lr.run", "resume=0123456789abcdef", f"data.dir={mnist_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "there is no MLflow store at sqlite:///" in completed.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_of_a_finished_run_is_refused(tmp_path, mnist_dir):
    assert _run(tmp_path, mnist_dir, "train.epochs=1").returncode == 0
    client, (run,) = _runs(tmp_path)
    completed = _run(tmp_path, mnist_dir, f"resume={run.info.run_id}")
    assert completed.returncode == 1
    assert "that run is FINISHED; there is nothing to resume" in completed.output


def test_unreachable_tracking_server_is_a_clear_error_before_training(tmp_path, mnist_dir):
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "mnist_lr.run", "tracking.uri=http://127.0.0.1:9",
         f"data.dir={mnist_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )  # fmt: skip
    completed.output = completed.stdout
    assert completed.returncode == 1
    assert "no MLflow tracking server answers at http://127.0.0.1:9" in completed.output
    assert "epoch=" not in completed.output
    assert time.monotonic() - started < 60


def test_unwritable_store_path_is_a_clear_error_before_training(tmp_path, mnist_dir):
    (tmp_path / "a-file").write_text("not a folder")
    completed = subprocess.run(
        [sys.executable, "-m", "mnist_lr.run", f"tracking.uri=sqlite:///{tmp_path}/a-file/x.db",
         f"data.dir={mnist_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )  # fmt: skip
    completed.output = completed.stdout
    assert completed.returncode == 1
    assert "cannot use the MLflow tracking store" in completed.output
    assert "epoch=" not in completed.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0.1,0.3", "Ambiguous value for argument 'optimizer.lr=0.1,0.3'"),
        ("+seed=3", "Could not append to config. An item is already at 'seed'"),
        ("sed=3", "Could not override 'sed'"),
        ("optimizer.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("train.epochs=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
        (
            "batch_size=32",
            "batch_size=32: batch_size is a config group and takes batch_size.size=32",
        ),
        ("optimizer=2", "optimizer=2: optimizer is a config group and takes an option name"),
        ("data.dir=does-not-exist", "data.dir=does-not-exist: the folder"),
        ("+optimizer.momentum=0.9", "optimizer.momentum is not a setting of optimizer=sgd"),
    ],
)
def test_override_pitfalls_fail_before_any_run(tmp_path, override, message):
    completed = subprocess.run(
        [sys.executable, "-m", "mnist_lr.run", f"tracking.uri=sqlite:///{tmp_path}/m.db",
         override],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
        env={**os.environ, "MNIST_LR_DATA_DIR": str(tmp_path / "nowhere")},
    )  # fmt: skip
    completed.output = completed.stdout
    assert completed.returncode == 1
    assert message in completed.output
    assert not (tmp_path / "m.db").exists()


def test_override_values_with_equals_and_scientific_notation_arrive_intact(tmp_path, mnist_dir):
    completed = _run(
        tmp_path, mnist_dir, "train.epochs=1", "optimizer.lr=1e-1", "tracking.run_name='a=b'"
    )
    assert completed.returncode == 0, completed.output
    client, (run,) = _runs(tmp_path)
    assert run.info.run_name == "a=b"
    assert run.data.params["optimizer.lr"] == "0.1"


def test_rerun_of_an_interrupted_sweep_skips_finished_and_resumes_the_rest(tmp_path, mnist_dir):
    overrides = (
        "hydra.mode=MULTIRUN",
        "optimizer.lr=0.01,0.02,0.03",
        "train.epochs=4",
        "batch_size=bs10",
    )

    def in_second_job_after_two_epochs(seen: str) -> bool:
        return "#1 :" in seen and "epoch=2/4" in seen.split("#1 :", 1)[1]

    returncode, output = _terminate_when(
        _command(tmp_path, mnist_dir, *overrides), tmp_path, in_second_job_after_two_epochs
    )
    assert returncode != 0, output
    client, runs = _runs(tmp_path)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FINISHED", "KILLED", "KILLED"], output  # job 0, job 1, the parent

    rerun = _run(tmp_path, mnist_dir, *overrides)

    assert rerun.returncode == 0, rerun.output
    assert "already FINISHED" in rerun.output
    assert "after epoch 2" in rerun.output or "after epoch 3" in rerun.output
    client, runs = _runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for child in children:
        assert child.info.status == "FINISHED"
        assert [s for s, _ in _history(client, child.info.run_id, "test/accuracy")] == [1, 2, 3, 4]

    fresh = _run(tmp_path, mnist_dir, *overrides, "restart=true")
    assert fresh.returncode == 0, fresh.output
    client, runs = _runs(tmp_path)
    assert len(runs) == 4 + 4
