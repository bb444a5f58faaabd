"""Sweeps end to end on real MNIST, and their preview.

Each sweep test launches ``python -m mnist_lr.run`` as a subprocess in a fresh folder with
its own SQLite store, then reads what the sweep left in MLflow (one parent run, a child
run per job, the comparison) and on disk. The preview tests check that
``python -m mnist_lr.preview`` lists exactly the jobs such a sweep ran."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mnist_lr.preview import CONFIG_DIR, plan_sweep
from mnist_lr.preview import main as preview_main
from mnist_lr.sweep import HANDOFF_FILE, OUTCOME_FILE
from mnist_lr.tracking import ERROR_TAG, PARENT_RUN_TAG

COMPARE_ARTIFACTS = {"table.md", "table.csv", "loss.png", "accuracy.png", "train_vs_test.png"}
EPOCH_METRICS = {
    "train/loss", "train/accuracy", "val/loss", "val/accuracy", "test/loss", "test/accuracy",
    "learning_rate", "epoch_seconds", "eval_seconds",
}  # fmt: skip
STORE_RACES = ("database is locked", "duplicate column", "_alembic_tmp")
# Short jobs: one epoch of batches of 1000 takes about a second.
QUICK = ("train.epochs=1", "batch_size=bs1000")
PARALLEL = ("hydra/launcher=joblib",)


@dataclass
class Sweep:
    """What one ``python -m mnist_lr.run`` multirun left: its exit status and output, and
    its runs in the store."""

    returncode: int
    output: str
    client: MlflowClient
    parent: Run
    children: list[Run]
    arguments: list[str]  # what followed ``python -m mnist_lr.run``

    @property
    def sweep_dir(self) -> Path:
        return Path(self.parent.data.tags["sweep.dir"])

    def child(self, status: str) -> Run:
        (run,) = [run for run in self.children if run.info.status == status]
        return run


def sweep_command(folder: Path, mnist_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "mnist_lr.run", *overrides,
        f"tracking.uri=sqlite:///{folder}/mlflow.db", f"data.dir={mnist_dir}",
    ]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    """No store from the caller's environment: every sweep names its own."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_sweep(folder: Path, mnist_dir: Path, *overrides: str, timeout: float = 600) -> Sweep:
    """Run a multirun in ``folder`` (its launch folder, holding its store) and read it back."""
    folder.mkdir(parents=True, exist_ok=True)
    command = sweep_command(folder, mnist_dir, *overrides)
    completed = subprocess.run(
        command,
        cwd=folder,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = completed.stdout + completed.stderr
    return read_sweep(folder, completed.returncode, output, command[3:])


def read_sweep(folder: Path, returncode: int, output: str, arguments: list[str]) -> Sweep:
    """The one parent run in ``folder``'s store and its children, oldest first."""
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiment_ids, order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if PARENT_RUN_TAG not in run.data.tags]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}:\n{output}"
    parent = parents[0]
    children = [run for run in runs if run is not parent]
    for child in children:
        assert child.data.tags[PARENT_RUN_TAG] == parent.info.run_id
        assert child.info.experiment_id == parent.info.experiment_id
    return Sweep(returncode, output, client, parent, children, arguments)


def history(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of ``key``, by step."""
    metrics = client.get_metric_history(run.info.run_id, key)
    return sorted((metric.step, metric.value) for metric in metrics)


def best(points: list[tuple[int, float]], lowest: bool = False) -> tuple[float, int]:
    """The best value and its step (the earliest on ties)."""
    sign = 1 if lowest else -1
    step, value = min(points, key=lambda point: (sign * point[1], point[0]))
    return value, step


def read_artifact(client: MlflowClient, run: Run, path: str) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        return Path(client.download_artifacts(run.info.run_id, path, scratch)).read_text()


def csv_columns(text: str) -> dict[str, dict[str, str]]:
    """A comparison CSV as ``{run name: {row label: cell}}``."""
    header, *rows = list(csv.reader(io.StringIO(text)))
    return {
        name: {row[0]: row[index] for row in rows}
        for index, name in enumerate(header[1:], start=1)
    }


def markdown_columns(text: str) -> dict[str, dict[str, str]]:
    """A comparison Markdown table as ``{run name: {row label: cell}}``."""
    lines = [line.strip().strip("|").split("|") for line in text.strip().splitlines()]
    header, rows = lines[0], lines[2:]
    cells = [[cell.strip() for cell in row] for row in [header, *rows]]
    return {
        name: {row[0]: row[index] for row in cells[1:]}
        for index, name in enumerate(cells[0][1:], start=1)
    }


def expected_column(client: MlflowClient, run: Run) -> dict[str, str]:
    """Every number the comparison should show for ``run``, recomputed from the run's
    own metric history and params."""
    params, metrics = run.data.params, run.data.metrics
    loss, loss_epoch = best(history(client, run, "test/loss"), lowest=True)
    accuracy_history = history(client, run, "test/accuracy")
    accuracy, accuracy_epoch = best(accuracy_history)
    n_test = 10_000
    column = {
        "status": run.info.status,
        "optimizer": params["optimizer.name"],
        "epochs": params["train.epochs"],
        "batch size": params["batch_size.size"],
        "learning rate": params["optimizer.lr"],
        "momentum": params.get("optimizer.momentum", "-"),
        "seed": params["seed"],
        "best test loss (sum) @ epoch": f"{loss * n_test:.2f} @ {loss_epoch}",
        "best test accuracy @ epoch": f"{accuracy:.4f} @ {accuracy_epoch}",
        "final test accuracy": f"{accuracy_history[-1][1]:.4f}",
        "training seconds": f"{metrics['train_seconds']:.2f}",
    }
    if "reference.best_test_accuracy" in params:
        ref_accuracy = float(params["reference.best_test_accuracy"])
        ref_loss = float(params["reference.best_test_loss_sum"])
        column |= {
            "reference best test accuracy @ epoch": (
                f"{ref_accuracy:.4f} @ {params['reference.best_test_accuracy_epoch']}"
            ),
            "difference in accuracy": f"{accuracy - ref_accuracy:+.4f}",
            "reference best test loss (sum) @ epoch": (
                f"{ref_loss:.2f} @ {params['reference.best_test_loss_epoch']}"
            ),
            "difference in loss (sum)": f"{loss * n_test - ref_loss:+.2f}",
        }
    return column


def assert_no_nonfinite_metric(sweep: Sweep) -> None:
    for run in [sweep.parent, *sweep.children]:
        for key in run.data.metrics:
            for step, value in history(sweep.client, run, key):
                assert math.isfinite(value), f"{run.info.run_name}: {key}={value} at {step}"


# The reference sweep

# Learning decay as the comparison words it, per reference configuration.
REFERENCE_DECAY = {
    "config_sample": "none",
    "config_1": "none",
    "config_2": "none",
    "config_3": "plateau x0.75 on test/accuracy",
}


@pytest.fixture(scope="module", params=["basic", "joblib"])
def reference_sweep(request, tmp_path_factory, mnist_dir) -> Sweep:
    """The four reference configurations for 2 epochs, one job at a time or two at once."""
    launcher = () if request.param == "basic" else (*PARALLEL, "hydra.launcher.n_jobs=2")
    folder = tmp_path_factory.mktemp(f"reference-{request.param}")
    return run_sweep(folder, mnist_dir, "+sweep=reference", "train.epochs=2", *launcher)


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_reference_is_one_parent_with_four_finished_children(reference_sweep):
    sweep = reference_sweep
    assert sweep.returncode == 0, sweep.output
    assert [run.info.status for run in sweep.children] == ["FINISHED"] * 4, sweep.output
    assert sorted(run.data.tags["experiment"] for run in sweep.children) == sorted(REFERENCE_DECAY)
    assert sweep.parent.info.status == "FINISHED"
    assert sweep.parent.data.tags["sweep"] == "reference"
    assert sweep.parent.data.metrics["sweep/jobs_finished"] == 4
    assert sweep.parent.data.metrics["sweep/jobs_failed"] == 0


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_reference_logs_the_comparison_to_the_parent(reference_sweep):
    sweep = reference_sweep
    logged = sweep.client.list_artifacts(sweep.parent.info.run_id, "compare")
    assert {Path(item.path).name for item in logged} >= COMPARE_ARTIFACTS
    assert "Comparison of sweep 'reference'" in sweep.output


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_reference_table_numbers_are_the_childrens_metrics(reference_sweep):
    sweep = reference_sweep
    table = csv_columns(read_artifact(sweep.client, sweep.parent, "compare/table.csv"))
    markdown = markdown_columns(read_artifact(sweep.client, sweep.parent, "compare/table.md"))
    assert markdown == table
    assert sorted(table) == sorted(run.info.run_name for run in sweep.children)
    for run in sweep.children:
        column = table[run.info.run_name]
        expected = expected_column(sweep.client, run)
        expected["learning decay"] = REFERENCE_DECAY[run.data.tags["experiment"]]
        assert column == expected, run.info.run_name
        # The summary the run logged agrees with its own history.
        accuracy, epoch = best(history(sweep.client, run, "test/accuracy"))
        assert run.data.metrics["best/test_accuracy"] == accuracy
        assert run.data.metrics["best/test_epoch"] == epoch


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_reference_children_share_metric_keys_and_steps(reference_sweep):
    """MLflow's own compare view lines the children up by metric key and step."""
    sweep = reference_sweep
    keys = {frozenset(run.data.metrics) for run in sweep.children}
    assert len(keys) == 1
    for run in sweep.children:
        for key in EPOCH_METRICS - {"val/loss", "val/accuracy"}:
            assert [step for step, _ in history(sweep.client, run, key)] == [1, 2], key


# Other launchers


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_through_submitit_local_records_every_job(tmp_path, mnist_dir):
    """submitit runs each job in a process of its own, started from its own folder; the
    jobs still find the parent run the launching process made."""
    launcher = ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    sweep = run_sweep(tmp_path, mnist_dir, "-m", "seed=0,1", *QUICK, *launcher)

    assert sweep.returncode == 0, sweep.output
    assert sorted(run.data.params["seed"] for run in sweep.children) == ["0", "1"]
    assert {run.info.status for run in sweep.children} == {"FINISHED"}
    assert sweep.parent.info.status == "FINISHED"
    assert sweep.parent.data.metrics["sweep/jobs_finished"] == 2
    job_logs = list((sweep.sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2
    assert all("epoch=1/1" in log.read_text() for log in job_logs)


# Optuna (the optional extra)


def skip_without_optuna() -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper",
        reason="hydra-optuna-sweeper is an optional extra: pip install -e '.[optuna]'",
    )


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_optuna_searches_the_learning_rate_by_validation_accuracy(tmp_path, mnist_dir):
    skip_without_optuna()
    sweep = run_sweep(tmp_path, mnist_dir, "+sweep=optuna_lr", "hydra.sweeper.n_trials=3", *QUICK)

    assert sweep.returncode == 0, sweep.output
    assert len(sweep.children) == 3
    assert {run.info.status for run in sweep.children} == {"FINISHED"}
    rates = [float(run.data.params["optimizer.lr"]) for run in sweep.children]
    assert len(set(rates)) == 3
    assert all(0.001 <= rate <= 1.0 for rate in rates)
    assert sweep.parent.data.tags["sweep"] == "optuna_lr"
    assert sweep.parent.data.metrics["sweep/jobs_finished"] == 3
    # The study's best trial is the child with the best validation accuracy.
    result = yaml.safe_load((sweep.sweep_dir / "optimization_results.yaml").read_text())
    best = max(sweep.children, key=lambda run: run.data.metrics["best/val_accuracy"])
    assert result["best_value"] == best.data.metrics["best/val_accuracy"]
    assert result["best_params"]["optimizer.lr"] == pytest.approx(
        float(best.data.params["optimizer.lr"])
    )


def test_sweep_optuna_without_a_validation_split_stops_before_any_job(tmp_path):
    skip_without_optuna()
    completed = subprocess.run(
        sweep_command(tmp_path, tmp_path, "+sweep=optuna_lr", "data.val_size=0"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode != 0
    assert "data.val_size=0 leaves no validation split" in completed.stdout + completed.stderr
    assert not (tmp_path / "mlflow.db").exists()


# Failures


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_with_a_diverged_job_fails_and_names_it(tmp_path, mnist_dir):
    # The gradient of the mean cross-entropy is bounded, so weights only stop being finite
    # when the step itself overflows float32: 1e38 does within the first epoch, 1e12 never.
    sweep = run_sweep(tmp_path, mnist_dir, "-m", "optimizer.lr=0.1,1e38", *QUICK)

    assert sweep.returncode != 0, sweep.output
    diverged, finished = sweep.child("FAILED"), sweep.child("FINISHED")
    assert diverged.data.params["optimizer.lr"] == "1e+38"
    assert "DivergenceError: training diverged" in diverged.data.tags[ERROR_TAG]
    assert diverged.data.tags["overrides"] in sweep.output
    assert "1 of 2 jobs failed" in sweep.output
    assert finished.data.params["optimizer.lr"] == "0.1"
    assert sweep.parent.info.status == "FAILED"
    assert sweep.parent.data.metrics["sweep/jobs_failed"] == 1
    assert sweep.parent.data.metrics["sweep/jobs_finished"] == 1
    assert_no_nonfinite_metric(sweep)


# Output folders and parallel jobs


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_started_at_once_get_their_own_folders(tmp_path, mnist_dir):
    """Two sweeps launched in the same instant from one folder never share a sweep folder,
    and every job of each has a folder of its own."""
    folders = [tmp_path / "first", tmp_path / "second"]
    for folder in folders:
        folder.mkdir()
    processes = [
        subprocess.Popen(
            sweep_command(folder, mnist_dir, "-m", "seed=0,1", *QUICK),
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder in folders
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    sweeps = [
        read_sweep(folder, process.returncode, output, process.args[3:])
        for folder, process, output in zip(folders, processes, outputs, strict=True)
    ]

    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    sweep_dirs = [sweep.sweep_dir for sweep in sweeps]
    assert sweep_dirs[0] != sweep_dirs[1]
    for sweep in sweeps:
        assert json.loads((sweep.sweep_dir / HANDOFF_FILE).read_text())["parent_run_id"] == (
            sweep.parent.info.run_id
        )
        outcomes = sorted(sweep.sweep_dir.glob(f"*/{OUTCOME_FILE}"))
        assert [path.parent.name for path in outcomes] == ["0", "1"]
        assert [run.info.status for run in sweep.children] == ["FINISHED"] * 2


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory, mnist_dir) -> Sweep:
    """Sixteen short jobs, four at a time, on a store that does not exist yet: four
    configs by four seeds (the load issue 4 names)."""
    folder = tmp_path_factory.mktemp("parallel")
    assert not (folder / "mlflow.db").exists()
    overrides = ("optimizer.lr=0.01,0.03,0.1,0.3", "seed=0,1,2,3")
    return run_sweep(
        folder, mnist_dir, "-m", *overrides, *QUICK, *PARALLEL, "hydra.launcher.n_jobs=4"
    )


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_with_four_workers_loses_no_run_or_metric(parallel_sweep):
    sweep = parallel_sweep
    assert sweep.returncode == 0, sweep.output
    for race in STORE_RACES:
        assert race not in sweep.output
    assert len(sweep.children) == 16
    assert {run.info.status for run in sweep.children} == {"FINISHED"}
    configurations = {
        (run.data.params["optimizer.lr"], run.data.params["seed"]) for run in sweep.children
    }
    assert len(configurations) == 16
    for run in sweep.children:
        assert set(run.data.metrics) >= EPOCH_METRICS, run.info.run_name
        for key in EPOCH_METRICS:
            assert [step for step, _ in history(sweep.client, run, key)] == [1], key
        assert {"best/test_accuracy", "best/val_accuracy", "train_seconds"} <= set(
            run.data.metrics
        )
    assert sweep.parent.data.metrics["sweep/jobs_finished"] == 16
    assert_no_nonfinite_metric(sweep)


@pytest.mark.mnist
@pytest.mark.slow
def test_sweep_over_seeds_shows_mean_and_std_per_configuration(parallel_sweep):
    sweep = parallel_sweep
    table = markdown_columns(read_artifact(sweep.client, sweep.parent, "compare/seeds.md"))
    by_rate: dict[str, list[Run]] = {}
    for run in sweep.children:
        by_rate.setdefault(run.data.params["optimizer.lr"], []).append(run)

    assert len(table) == len(by_rate) == 4
    for runs in by_rate.values():
        (configuration,) = {run.info.run_name.rsplit("-seed", 1)[0] for run in runs}
        column = table[configuration]
        accuracies = [best(history(sweep.client, run, "test/accuracy"))[0] for run in runs]
        mean, spread = statistics.mean(accuracies), statistics.stdev(accuracies)
        assert column["best test accuracy, mean ± std"] == f"{mean:.4f} ± {spread:.4f}"
        assert sorted(column["seeds"].split(", ")) == ["0", "1", "2", "3"]


# Preview


def preview(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_lr.preview", *arguments],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def previewed_jobs(output: str) -> list[str]:
    """The job lines of the preview's output (``  #3  key=value ...``), without numbers,
    checking they are numbered 0, 1, 2..."""
    jobs = [line.split(maxsplit=1) for line in output.splitlines() if line.startswith("  #")]
    assert [number for number, _ in jobs] == [f"#{index}" for index in range(len(jobs))]
    return [overrides for _, overrides in jobs]


def executed_jobs(sweep: Sweep) -> list[str]:
    """Each job's overrides as the job itself recorded them, in job order."""
    folders = sorted(sweep.sweep_dir.glob(f"*/{OUTCOME_FILE}"), key=lambda p: int(p.parent.name))
    return [" ".join(json.loads(path.read_text())["overrides"]) for path in folders]


def assert_preview_matches(sweep: Sweep, folder: Path) -> None:
    completed = preview(sweep.arguments, folder)

    assert completed.returncode == 0, completed.stderr
    jobs = previewed_jobs(completed.stdout)
    assert jobs == executed_jobs(sweep)
    assert sorted(jobs) == sorted(run.data.tags["overrides"] for run in sweep.children)
    assert f"sweep of {len(jobs)} jobs" in completed.stdout
    # Nothing ran: no output folder, no store.
    assert list(folder.iterdir()) == []


@pytest.mark.mnist
@pytest.mark.slow
def test_preview_lists_the_jobs_the_reference_sweep_ran(reference_sweep, tmp_path):
    assert_preview_matches(reference_sweep, tmp_path)


@pytest.mark.mnist
@pytest.mark.slow
def test_preview_lists_the_jobs_a_command_line_sweep_ran(parallel_sweep, tmp_path):
    assert_preview_matches(parallel_sweep, tmp_path)


SWEEP_FILES = sorted(path.stem for path in (CONFIG_DIR / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_preview_every_sweep_file_composes(name):
    if name.startswith("optuna"):
        skip_without_optuna()
    plan = plan_sweep([f"+sweep={name}"], multirun=True)
    assert plan.problems == {}
    assert plan.jobs is None or len(plan.jobs) >= 1


@pytest.mark.parametrize(
    "arguments, count, launcher",
    [
        (["+sweep=reference"], 4, "basic"),
        (["+sweep=lr", "optimizer=momentum"], 7, "basic"),
        (["+sweep=seeds", "hydra/launcher=joblib"], 12, "joblib"),
        (["+sweep=[reference,slurm]"], 4, "submitit_slurm"),
        (["-m", "optimizer.lr=0.1,0.3", "seed=0,1,2"], 6, "basic"),
        (["-m", "optimizer.lr=range(1,4)", "batch_size=bs100,bs1000"], 6, "basic"),
    ],
)
def test_preview_counts_the_jobs(arguments, count, launcher, capsys):
    assert preview_main(arguments) == 0
    output = capsys.readouterr().out
    assert len(previewed_jobs(output)) == count
    assert f"sweep of {count} jobs (hydra/launcher={launcher})" in output


def test_preview_command_line_replaces_a_sweep_param():
    plan = plan_sweep(["+sweep=lr", "optimizer.lr=0.05,0.5"])
    assert plan.jobs == [
        ["optimizer.lr=0.05", "+sweep=lr"],
        ["optimizer.lr=0.5", "+sweep=lr"],
    ]


def test_preview_without_multirun_is_a_single_run(capsys):
    assert preview_main(["optimizer.lr=0.5"]) == 0
    output = capsys.readouterr().out
    assert "a single run, not a sweep" in output
    assert previewed_jobs(output) == ["optimizer.lr=0.5"]


def test_preview_names_jobs_that_would_fail(capsys):
    assert preview_main(["-m", "optimizer.lr=-1,0.1", "optimizer=sgd,nope"]) == 1
    output = capsys.readouterr().out
    assert "got -1.0; for example optimizer.lr=0.01" in output
    assert "cannot be composed, so the sweep would not start" in output
    assert "3 of them would fail" in output


def test_preview_rejects_a_sweep_value_without_multirun(capsys):
    assert preview_main(["optimizer.lr=0.1,0.3"]) == 2
    assert "Ambiguous value for argument 'optimizer.lr=0.1,0.3'" in capsys.readouterr().err
