"""Side-by-side comparison of a sweep's child runs, logged to the parent run.

``python -m mnist_lr.compare <parent run id | sweep name>`` builds it on demand; the sweep
callback builds it when a multirun ends. The table has one column per run; the numbers
come from the children's own MLflow metrics and params.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from mnist_lr import tracking
from mnist_lr.plots import new_figure
from mnist_lr.sweep import JOB_TAG

logger = logging.getLogger(__name__)

CURVES = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "test/loss", "test/accuracy")
# Params that do not make two runs different configurations.
NOT_CONFIGURATION = ("seed", "tracking.run_name")


@dataclass
class ChildRun:
    """What the comparison needs of one child run."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    summary: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # metric -> value per epoch

    def best(self, metric: str, lowest: bool = False) -> tuple[float, int]:
        """The best value of ``metric`` and its 1-based epoch (earliest on ties)."""
        values = self.curves[metric]
        pick = min if lowest else max
        value = pick(values)
        return value, values.index(value) + 1


def find_parent(client: MlflowClient, reference: str) -> str:
    """The parent run id for a run id or a sweep name (the latest sweep of that name)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(reference).info.run_id
    except MlflowException:
        pass
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.sweep = '{reference}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ValueError(
            f"no run id or sweep named {reference!r} in {client.tracking_uri}; "
            "give a parent run id from mlflow ui, or a sweep name such as 'reference'"
        )
    return runs[0].info.run_id


def load_children(client: MlflowClient, parent_run_id: str) -> list[ChildRun]:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    children = []
    for run in sorted(runs, key=_job_order):
        child = ChildRun(
            run.info.run_id, run.info.run_name, run.info.status, run.data.params, run.data.metrics
        )
        for key in CURVES:
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            if history:
                child.curves[key] = [metric.value for metric in history]
        children.append(child)
    return children


def _job_order(run) -> tuple[float, int]:
    """Parallel launchers start jobs in any order: sort by job number where the run has
    one, else by start time."""
    job = run.data.tags.get(JOB_TAG, "")
    return (int(job) if job.isdigit() else math.inf, run.info.start_time)


def _decay(params: dict[str, str]) -> str:
    name = params.get("schedule.name", "constant")
    if name == "constant":
        return "none"
    if name == "plateau":
        return f"plateau x{params['schedule.decay_factor']} on {params['schedule.monitor']}"
    if name == "cosine":
        return f"cosine to {params['schedule.min_lr']}"
    return f"{name} x{params['schedule.decay_factor']}"


def comparison_rows(children: list[ChildRun]) -> list[tuple[str, list[str]]]:
    """``(row label, one cell per run)``, numbers taken from each run's metrics; a cell
    a run has no value for is ``-``."""
    columns = [_column(child) for child in children]
    labels = list(dict.fromkeys(label for column in columns for label in column))
    return [(label, [column.get(label, "-") for column in columns]) for label in labels]


def _column(child: ChildRun) -> dict[str, str]:
    p = child.params
    size = p.get("batch_size.size", "")
    column = {
        "status": child.status,
        "optimizer": p.get("optimizer.name", ""),
        "epochs": p.get("train.epochs", ""),
        "batch size": "full" if size == "None" else size,
        "learning rate": p.get("optimizer.lr", ""),
        "learning decay": _decay(p),
        "momentum": p.get("optimizer.momentum", "-"),
        "seed": p.get("seed", ""),
    }
    if "test/loss" not in child.curves:
        return column
    n_test = int(p.get("dataset.n_test", 10_000))
    loss, loss_epoch = child.best("test/loss", lowest=True)
    accuracy, accuracy_epoch = child.best("test/accuracy")
    column["best test loss (sum) @ epoch"] = f"{loss * n_test:.2f} @ {loss_epoch}"
    column["best test accuracy @ epoch"] = f"{accuracy:.4f} @ {accuracy_epoch}"
    column["final test accuracy"] = f"{child.curves['test/accuracy'][-1]:.4f}"
    if "val/accuracy" in child.curves:
        val, val_epoch = child.best("val/accuracy")
        column["best val accuracy @ epoch"] = f"{val:.4f} @ {val_epoch}"
        column["test accuracy at best val epoch"] = (
            f"{child.curves['test/accuracy'][val_epoch - 1]:.4f}"
        )
    column["training seconds"] = f"{child.summary.get('train_seconds', math.nan):.2f}"
    if "reference.best_test_accuracy" in p:
        ref_accuracy = float(p["reference.best_test_accuracy"])
        ref_loss = float(p["reference.best_test_loss_sum"])
        column["reference best test accuracy @ epoch"] = (
            f"{ref_accuracy:.4f} @ {p['reference.best_test_accuracy_epoch']}"
        )
        column["difference in accuracy"] = f"{accuracy - ref_accuracy:+.4f}"
        column["reference best test loss (sum) @ epoch"] = (
            f"{ref_loss:.2f} @ {p['reference.best_test_loss_epoch']}"
        )
        column["difference in loss (sum)"] = f"{loss * n_test - ref_loss:+.2f}"
    return column


def seed_rows(children: list[ChildRun]) -> list[tuple[str, list[str]]] | None:
    """Mean ± standard deviation over runs that differ only by seed, one column per
    configuration; None when no configuration ran with more than one seed."""
    groups: dict[tuple, list[ChildRun]] = defaultdict(list)
    for child in children:
        if "test/accuracy" in child.curves:
            groups[_configuration(child)].append(child)
    if all(len(group) < 2 for group in groups.values()):
        return None
    rows: dict[str, list[str]] = defaultdict(list)
    for group in groups.values():
        rows["configuration"].append(group[0].name.rsplit("-seed", 1)[0])
        rows["seeds"].append(", ".join(child.params.get("seed", "?") for child in group))
        for label, values in (
            ("best test accuracy", [child.best("test/accuracy")[0] for child in group]),
            ("final test accuracy", [child.curves["test/accuracy"][-1] for child in group]),
        ):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            rows[f"{label}, mean ± std"].append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
    return list(rows.items())


def _configuration(child: ChildRun) -> tuple:
    """The params that make a configuration, without the seed."""
    params = child.params.items()
    return tuple(sorted((k, v) for k, v in params if k not in NOT_CONFIGURATION))


def to_markdown(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def to_csv(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["", *names])
    writer.writerows([label, *cells] for label, cells in rows)
    return buffer.getvalue()


def plot_overlay(children: list[ChildRun], metric: str, title: str):
    """One line per run of ``metric`` per epoch, legend by run name."""
    figure = new_figure(8, 5)
    axes = figure.add_subplot()
    for child in children:
        if metric in child.curves:
            values = child.curves[metric]
            axes.plot(range(1, len(values) + 1), values, marker="o", ms=2, label=child.name)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def plot_train_vs_test(children: list[ChildRun]):
    """Train against test accuracy for each run, one panel per run."""
    columns = min(4, len(children))
    rows = math.ceil(len(children) / columns)
    figure = new_figure(3.2 * columns, 2.6 * rows)
    for index, child in enumerate(children, start=1):
        axes = figure.add_subplot(rows, columns, index)
        for split in ("train", "test"):
            values = child.curves.get(f"{split}/accuracy", [])
            axes.plot(range(1, len(values) + 1), values, label=split)
        axes.set_title(child.name, fontsize=7)
        axes.tick_params(labelsize=6)
        axes.legend(fontsize=6)
    return figure


def plot_learning_rates(children: list[ChildRun]):
    """Best test and validation accuracy against the learning rate, log axis; None unless
    the learning rate is what the runs differ in (seeds aside): a line through runs that
    also differ in batch size or optimizer would mislead."""
    points = [
        (float(c.params["optimizer.lr"]), c) for c in children if "test/accuracy" in c.curves
    ]
    others = {
        tuple(kv for kv in _configuration(child) if kv[0] != "optimizer.lr") for _, child in points
    }
    if len({lr for lr, _ in points}) < 2 or len(others) > 1:
        return None
    points.sort(key=lambda point: point[0])
    figure = new_figure()
    axes = figure.add_subplot()
    for metric in ("val/accuracy", "test/accuracy"):
        pairs = [(lr, child.best(metric)[0]) for lr, child in points if metric in child.curves]
        if pairs:
            axes.plot(*zip(*pairs, strict=True), marker="o", label=f"best {metric}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (optimizer.lr)")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return figure


def compare_sweep(client: MlflowClient, parent_run_id: str, title: str) -> str:
    """Build the comparison of ``parent_run_id``'s children, log it to the parent under
    ``compare/``, print it, and return the Markdown table."""
    children = load_children(client, parent_run_id)
    if not children:
        logger.warning("parent run %s has no child runs to compare", parent_run_id)
        return ""
    names = [child.name for child in children]
    rows = comparison_rows(children)
    markdown = to_markdown(names, rows)
    parent = tracking.Run(client, parent_run_id)
    parent.log_text(markdown, "compare/table.md")
    parent.log_text(to_csv(names, rows), "compare/table.csv")
    seeds = seed_rows(children)
    if seeds is not None:
        configurations = seeds[0][1]
        seed_markdown = to_markdown(configurations, seeds[1:])
        parent.log_text(seed_markdown, "compare/seeds.md")
        markdown += "\nAcross seeds:\n\n" + seed_markdown
    figures = {
        "loss.png": plot_overlay(children, "test/loss", f"{title}: test loss per epoch"),
        "accuracy.png": plot_overlay(children, "test/accuracy", f"{title}: test accuracy"),
        "train_vs_test.png": plot_train_vs_test(children),
        "learning_rate.png": plot_learning_rates(children),
    }
    with tempfile.TemporaryDirectory() as scratch:
        for file_name, figure in figures.items():
            if figure is not None:
                figure.savefig(Path(scratch) / file_name, dpi=100)
                parent.log_artifact(Path(scratch) / file_name, "compare")
    print(f"\nComparison of sweep {title!r} (parent run {parent_run_id}):\n\n{markdown}")
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lr.compare",
        description="Compare the child runs of a sweep side by side and log the comparison "
        "to its parent run.",
    )
    parser.add_argument("sweep", help="parent run id, or sweep name (latest sweep of that name)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uri = tracking.resolve_tracking_uri(args.tracking_uri, Path.cwd())
    try:
        client = MlflowClient(_existing_store(uri))
        parent_run_id = find_parent(client, args.sweep)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not compare_sweep(client, parent_run_id, client.get_run(parent_run_id).info.run_name):
        print(
            f"error: run {parent_run_id} has no child runs; give a sweep's parent run id "
            "or a sweep name",
            file=sys.stderr,
        )
        return 2
    return 0


def _existing_store(uri: str) -> str:
    """``uri``, unless it names a SQLite file that does not exist: opening it would leave
    an empty store wherever the command happened to run."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ValueError(
            f"no MLflow store at {uri}; run this in the folder the sweep was launched from, "
            "or give --tracking-uri"
        )
    return uri


if __name__ == "__main__":
    sys.exit(main())
