"""Tests for mnist_lr.compare: the table and seed rows on hand-built runs (no MLflow), and
``python -m mnist_lr.compare`` on a finished sweep on real MNIST."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from mnist_lr.compare import (
    ChildRun,
    _job_order,
    comparison_rows,
    seed_rows,
    to_csv,
    to_markdown,
)
from mnist_lr.sweep import JOB_TAG
from mnist_lr.tracking import PARENT_RUN_TAG


def child_run(
    name: str = "sgd-lr0.1-bs100-constant-seed0",
    *,
    test_accuracy: list[float] | None = None,
    test_loss: list[float] | None = None,
    val_accuracy: list[float] | None = None,
    status: str = "FINISHED",
    train_seconds: float = 1.0,
    **params: str,
) -> ChildRun:
    """A child run as the comparison sees it; params use the logged (flattened) keys."""
    logged = {
        "optimizer.name": "sgd",
        "optimizer.lr": "0.1",
        "train.epochs": "3",
        "batch_size.size": "100",
        "schedule.name": "constant",
        "seed": "0",
        "dataset.n_test": "10000",
    }
    logged |= {key.replace("__", "."): value for key, value in params.items()}
    curves = {}
    if test_accuracy is not None:
        curves["test/accuracy"] = test_accuracy
        curves["test/loss"] = test_loss or [1.0] * len(test_accuracy)
    if val_accuracy is not None:
        curves["val/accuracy"] = val_accuracy
    summary = {"train_seconds": train_seconds} if test_accuracy is not None else {}
    return ChildRun(f"id-{name}", name, status, logged, summary, curves)


def as_columns(rows: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Rows (label, one cell per run) turned into one {label: cell} per run."""
    runs = len(rows[0][1])
    return [{label: cells[index] for label, cells in rows} for index in range(runs)]


# comparison_rows


def test_comparison_rows_take_best_final_and_their_epochs_from_the_curves():
    run = child_run(
        test_accuracy=[0.80, 0.90, 0.90, 0.85],
        test_loss=[0.50, 0.31, 0.30, 0.30],
        val_accuracy=[0.70, 0.75, 0.72, 0.74],
        train_seconds=12.3,
    )
    (column,) = as_columns(comparison_rows([run]))

    # Earliest epoch on ties; loss summed over the 10,000 test images.
    assert column["best test loss (sum) @ epoch"] == "3000.00 @ 3"
    assert column["best test accuracy @ epoch"] == "0.9000 @ 2"
    assert column["final test accuracy"] == "0.8500"
    assert column["best val accuracy @ epoch"] == "0.7500 @ 2"
    assert column["test accuracy at best val epoch"] == "0.9000"
    assert column["training seconds"] == "12.30"


def test_comparison_rows_show_the_configuration_of_each_run():
    runs = [
        child_run("a", test_accuracy=[0.9]),
        child_run(
            "b",
            test_accuracy=[0.9],
            optimizer__name="momentum",
            optimizer__momentum="0.9",
            batch_size__size="None",
            schedule__name="plateau",
            schedule__decay_factor="0.75",
            schedule__monitor="val/accuracy",
        ),
        child_run("c", test_accuracy=[0.9], schedule__name="cosine", schedule__min_lr="0.0"),
        child_run("d", test_accuracy=[0.9], schedule__name="step", schedule__decay_factor="0.5"),
    ]
    a, b, c, d = as_columns(comparison_rows(runs))

    assert (a["optimizer"], a["momentum"], a["batch size"]) == ("sgd", "-", "100")
    assert (b["optimizer"], b["momentum"], b["batch size"]) == ("momentum", "0.9", "full")
    assert a["learning decay"] == "none"
    assert b["learning decay"] == "plateau x0.75 on val/accuracy"
    assert c["learning decay"] == "cosine to 0.0"
    assert d["learning decay"] == "step x0.5"
    assert (a["learning rate"], a["epochs"], a["seed"]) == ("0.1", "3", "0")


def test_comparison_rows_mark_what_a_run_lacks_with_a_dash():
    """A failed run has no curves, a run without a validation split no val rows."""
    failed = child_run("failed", status="FAILED")
    no_val = child_run("no-val", test_accuracy=[0.9])
    with_val = child_run("with-val", test_accuracy=[0.9], val_accuracy=[0.8])
    rows = dict(comparison_rows([failed, no_val, with_val]))

    assert rows["status"] == ["FAILED", "FINISHED", "FINISHED"]
    assert rows["best test accuracy @ epoch"] == ["-", "0.9000 @ 1", "0.9000 @ 1"]
    assert rows["best val accuracy @ epoch"] == ["-", "-", "0.8000 @ 1"]


def test_comparison_rows_put_the_reference_and_the_difference_beside_a_run():
    run = child_run(
        test_accuracy=[0.88, 0.9100],
        test_loss=[0.40, 0.33],
        reference__best_test_accuracy="0.9093",
        reference__best_test_accuracy_epoch="6",
        reference__best_test_loss_sum="3310.17",
        reference__best_test_loss_epoch="6",
    )
    (column,) = as_columns(comparison_rows([run]))

    assert column["reference best test accuracy @ epoch"] == "0.9093 @ 6"
    assert column["difference in accuracy"] == "+0.0007"
    assert column["reference best test loss (sum) @ epoch"] == "3310.17 @ 6"
    assert column["difference in loss (sum)"] == "-10.17"


# seed_rows


def test_seed_rows_give_mean_and_std_per_configuration():
    runs = [
        child_run("sgd-lr0.1-seed0", test_accuracy=[0.80, 0.90], seed="0"),
        child_run("sgd-lr0.1-seed1", test_accuracy=[0.92, 0.91], seed="1"),
        child_run("sgd-lr0.1-seed2", test_accuracy=[0.88, 0.89], seed="2"),
        child_run("sgd-lr0.3-seed0", test_accuracy=[0.70], optimizer__lr="0.3", seed="0"),
    ]
    rows = dict(seed_rows(runs))

    assert rows["configuration"] == ["sgd-lr0.1", "sgd-lr0.3"]
    assert rows["seeds"] == ["0, 1, 2", "0"]
    # best: 0.90, 0.92, 0.89 -> mean 0.9033, stdev 0.0153; final: 0.90, 0.91, 0.89
    assert rows["best test accuracy, mean ± std"] == ["0.9033 ± 0.0153", "0.7000 ± 0.0000"]
    assert rows["final test accuracy, mean ± std"] == ["0.9000 ± 0.0100", "0.7000 ± 0.0000"]


def test_seed_rows_are_none_without_repeated_seeds():
    runs = [
        child_run("a", test_accuracy=[0.9]),
        child_run("b", test_accuracy=[0.8], optimizer__lr="0.3"),
    ]
    assert seed_rows(runs) is None


def test_seed_rows_leave_out_runs_without_curves():
    runs = [
        child_run("ok-seed0", test_accuracy=[0.9], seed="0"),
        child_run("ok-seed1", test_accuracy=[0.8], seed="1"),
        child_run("failed-seed2", status="FAILED", seed="2"),
    ]
    assert dict(seed_rows(runs))["seeds"] == ["0, 1"]


# to_markdown, to_csv

ROWS = [("optimizer", ["sgd", "momentum"]), ("learning decay", ["none", "step x0.5, then 1"])]


def test_to_markdown_has_a_header_a_rule_and_a_line_per_row():
    text = to_markdown(["run a", "run b"], ROWS)
    assert text.splitlines() == [
        "| | run a | run b |",
        "|---|---|---|",
        "| optimizer | sgd | momentum |",
        "| learning decay | none | step x0.5, then 1 |",
    ]


def test_to_csv_round_trips_cells_with_commas():
    text = to_csv(["run a", "run, b"], ROWS)
    assert list(csv.reader(io.StringIO(text))) == [
        ["", "run a", "run, b"],
        ["optimizer", "sgd", "momentum"],
        ["learning decay", "none", "step x0.5, then 1"],
    ]


def test_children_are_listed_by_job_number_then_start_time():
    def run(start_time: int, job: str | None = None) -> SimpleNamespace:
        tags = {JOB_TAG: job} if job is not None else {}
        return SimpleNamespace(
            data=SimpleNamespace(tags=tags), info=SimpleNamespace(start_time=start_time)
        )

    runs = [run(1, "2"), run(2, "10"), run(3, "0"), run(0)]
    ordered = sorted(runs, key=_job_order)
    assert [r.data.tags.get(JOB_TAG) for r in ordered] == ["0", "2", "10", None]


# python -m mnist_lr.compare on a finished sweep


def compare_command(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "mnist_lr.compare", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, mnist_dir) -> tuple[Path, MlflowClient, str]:
    """The ``lr`` sweep cut to two short jobs: its launch folder, a client and the parent."""
    folder = tmp_path_factory.mktemp("finished")
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lr.run",
            "+sweep=lr",
            "optimizer.lr=0.1,0.3",
            "train.epochs=1",
            "batch_size=bs1000",
            f"data.dir={mnist_dir}",
        ],  # fmt: skip
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    (parent,) = client.search_runs(experiment_ids, filter_string="tags.sweep = 'lr'")
    return folder, client, parent.info.run_id


def child_names(client: MlflowClient, parent_run_id: str) -> list[str]:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    )
    return [run.info.run_name for run in children]


def forget_comparison(client: MlflowClient, parent_run_id: str) -> Path:
    """Delete the parent's logged comparison (a local artifact folder), to see it logged
    again."""
    artifacts = Path(urlparse(client.get_run(parent_run_id).info.artifact_uri).path)
    shutil.rmtree(artifacts / "compare")
    return artifacts / "compare"


@pytest.mark.mnist
@pytest.mark.slow
def test_compare_by_sweep_name_prints_and_logs_the_table(finished_sweep):
    folder, client, parent_run_id = finished_sweep
    compare_dir = forget_comparison(client, parent_run_id)

    # In the launch folder the default store is the sweep's.
    completed = compare_command("lr", cwd=folder)

    assert completed.returncode == 0, completed.stderr
    assert f"Comparison of sweep 'lr' (parent run {parent_run_id})" in completed.stdout
    for name in child_names(client, parent_run_id):
        assert name in completed.stdout
    assert "| best test accuracy @ epoch |" in completed.stdout
    logged = {path.name for path in compare_dir.iterdir()}
    assert {"table.md", "table.csv", "loss.png", "accuracy.png", "learning_rate.png"} <= logged
    assert (compare_dir / "table.md").read_text() in completed.stdout


@pytest.mark.mnist
@pytest.mark.slow
def test_compare_by_parent_run_id_from_another_folder(finished_sweep, tmp_path):
    folder, client, parent_run_id = finished_sweep
    compare_dir = forget_comparison(client, parent_run_id)

    completed = compare_command(
        parent_run_id, "--tracking-uri", f"sqlite:///{folder}/mlflow.db", cwd=tmp_path
    )

    assert completed.returncode == 0, completed.stderr
    assert f"(parent run {parent_run_id})" in completed.stdout
    assert (compare_dir / "table.csv").is_file()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.mnist
@pytest.mark.slow
def test_compare_unknown_sweep_is_a_clear_error(finished_sweep):
    folder, _, _ = finished_sweep
    completed = compare_command("no-such-sweep", cwd=folder)

    assert completed.returncode == 2
    assert "no run id or sweep named 'no-such-sweep'" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.mnist
@pytest.mark.slow
def test_compare_a_run_without_children_is_a_clear_error(finished_sweep):
    folder, client, parent_run_id = finished_sweep
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    (child, *_) = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    )
    completed = compare_command(child.info.run_id, cwd=folder)

    assert completed.returncode == 2
    assert "has no child runs" in completed.stderr


def test_compare_where_there_is_no_store_leaves_none(tmp_path):
    completed = compare_command("reference", cwd=tmp_path)

    assert completed.returncode == 2
    assert "no MLflow store at" in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_learning_rate_plot_only_when_the_learning_rate_is_what_differs():
    from mnist_lr.compare import plot_learning_rates

    grid = [
        child_run(f"lr{lr}", test_accuracy=[0.8, 0.9], optimizer__lr=lr, seed=seed)
        for lr in ("0.01", "0.1")
        for seed in ("0", "1")
    ]
    mixed = [
        child_run("a", test_accuracy=[0.8], optimizer__lr="0.005", batch_size__size="10"),
        child_run("b", test_accuracy=[0.9], optimizer__lr="0.0025", batch_size__size="100"),
    ]

    assert plot_learning_rates(grid) is not None
    assert plot_learning_rates(mixed) is None
    assert plot_learning_rates(grid[:2]) is None  # one learning rate, two seeds
