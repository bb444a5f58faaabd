"""The benchmark: ``python -m mnist_lr.bench [--repeats N] [--quick] [--json PATH]
[--markdown PATH]``.

One process, real MNIST (``$MNIST_LR_DATA_DIR`` or ``--data-dir``), medians over repeats.
It reports the machine, this machine's floor (one streaming copy of the float32 training
set; one full-batch forward and backward product), the trainer's training pass per epoch
at batch sizes 10, 100, 1000 and full for ``sgd`` and ``momentum`` as multiples of that
floor, PyTorch eager and the original per-sample algorithm as ratios, the time to 92% test
accuracy against scikit-learn's lbfgs, data loading, start-up, tracking overhead and the
peak memory of a whole run; then checks the targets of issue 5. PyTorch and scikit-learn
are optional (``pip install -e .[bench]``): without them their parts are skipped with a
note. ``--quick`` runs every part on a slice of the data with one repeat, in seconds, for
the smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mnist_lr.data import default_data_dir, load_mnist, split_validation
from mnist_lr.model import init_params
from mnist_lr.optimizers import make_optimizer
from mnist_lr.schedules import make_schedule
from mnist_lr.threads import available_cores, blas_description, blas_threads, training_threads
from mnist_lr.trainer import fit

logger = logging.getLogger(__name__)

OPTIMIZERS = {"sgd": 0.1, "momentum": 0.01}  # name -> learning rate (the config defaults)
TARGET_ACCURACY = 0.92
# The fastest configuration to 92% test accuracy found by hand (README "Performance").
RACE_CONFIG = {"optimizer": "momentum", "learning_rate": 0.1, "batch_size": 100}
VAL_SIZE = 5000
SOURCE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """How much of each measurement to do."""

    repeats: int
    epochs: int  # timed epochs per repeat of a training configuration
    train_rows: int | None  # None: the whole training split
    batch_sizes: tuple[int | None, ...]
    reference_fraction: float  # of an epoch, timed and scaled up
    tracking_epochs: int
    sklearn_max_iter: int

    @classmethod
    def full(cls, repeats: int) -> Settings:
        return cls(repeats, 3, None, (10, 100, 1000, None), 0.1, 15, 100)

    @classmethod
    def quick(cls) -> Settings:
        return cls(1, 1, 2000, (10, 100, 1000, None), 0.05, 2, 5)


@dataclass
class Data:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# The machine and its floor


def describe_machine() -> dict[str, object]:
    return {
        "cores": available_cores(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_description(),
        "numpy_blas": _numpy_blas_name(),
        "load_average": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _numpy_blas_name() -> str:
    config = np.show_config(mode="dicts")
    blas = config.get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()


def measure_floor(data: Data, repeats: int) -> dict[str, float]:
    """One streaming copy of the training images, and one full-batch forward and backward
    product (``X @ W`` and ``X.T @ D``) on every core."""
    images = data.train_images
    target = np.empty_like(images)
    np.copyto(target, images)  # fault the pages in before timing
    copy_seconds = median_seconds(lambda: np.copyto(target, images), repeats + 2)

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((images.shape[1], 10)).astype(np.float32)
    scores = np.empty((len(images), 10), np.float32)
    grads = np.empty_like(weights)

    def forward_backward() -> None:
        np.matmul(images, weights, out=scores)
        np.matmul(images.T, scores, out=grads)

    forward_backward()
    matmul_seconds = median_seconds(forward_backward, repeats + 2)
    return {
        "copy_seconds": copy_seconds,
        "copy_gb_per_second": 2 * images.nbytes / copy_seconds / 1e9,
        "matmul_seconds": matmul_seconds,
        "matmul_gflops": 4 * images.size * 10 / matmul_seconds / 1e9,
    }


# The trainer


def epoch_seconds(
    data: Data, optimizer: str, batch_size: int | None, settings: Settings
) -> list[float]:
    """Training-pass seconds of every timed epoch (the first epoch of each repeat, which
    faults in the buffers, is run but not counted)."""
    times = []
    for repeat in range(settings.repeats):
        results = fit(
            data.train_images,
            data.train_labels,
            {},
            params=init_params("zeros"),
            optimizer=make_optimizer(optimizer),
            schedule=make_schedule("constant", OPTIMIZERS[optimizer]),
            batch_size=batch_size,
            epochs=settings.epochs + 1,
            seed=repeat,
        )
        times += [result.metrics["epoch_seconds"] for result in results[1:]]
    return times


def measure_training(data: Data, settings: Settings, floor: dict[str, float]) -> list[dict]:
    rows = []
    n_samples = len(data.train_labels)
    for batch_size in settings.batch_sizes:
        for optimizer in OPTIMIZERS:
            seconds = statistics.median(epoch_seconds(data, optimizer, batch_size, settings))
            size = batch_size or n_samples
            rows.append(
                {
                    "optimizer": optimizer,
                    "batch_size": batch_size or "full",
                    "steps": -(-n_samples // size),
                    "blas_threads": training_threads(size),
                    "seconds": seconds,
                    "times_copy_floor": seconds / floor["copy_seconds"],
                    "times_matmul_floor": seconds / floor["matmul_seconds"],
                }
            )
            logger.info("trainer %s batch %s: %.4f s/epoch", optimizer, batch_size, seconds)
    return rows


# PyTorch eager


def measure_torch(data: Data, settings: Settings, training: list[dict]) -> dict:
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed: pip install -e .[bench] (torch==2.13.0)"}
    ours = {(row["optimizer"], row["batch_size"]): row["seconds"] for row in training}
    rows = []
    for batch_size in settings.batch_sizes:
        size = batch_size or len(data.train_labels)
        for optimizer in OPTIMIZERS:
            seconds = statistics.median(
                _torch_epoch_seconds(torch, data, optimizer, size, settings)
            )
            key = (optimizer, batch_size or "full")
            rows.append(
                {
                    "optimizer": optimizer,
                    "batch_size": batch_size or "full",
                    "threads": training_threads(size),
                    "seconds": seconds,
                    "torch_over_ours": seconds / ours[key],
                }
            )
            logger.info("torch %s batch %s: %.4f s/epoch", optimizer, batch_size, seconds)
    return {"version": torch.__version__, "rows": rows}


def _torch_epoch_seconds(torch, data: Data, optimizer: str, batch_size: int, settings: Settings):
    """The same algorithm as the trainer, written as PyTorch is usually written: a linear
    layer, ``cross_entropy``, autograd and ``torch.optim.SGD``; one shuffled gather per
    epoch and batches as views; the trainer's thread count for this batch size."""
    torch.set_num_threads(training_threads(batch_size))
    images = torch.from_numpy(data.train_images)
    labels = torch.from_numpy(data.train_labels)
    n_samples = len(labels)
    times = []
    for repeat in range(settings.repeats):
        generator = torch.Generator().manual_seed(repeat)
        model = torch.nn.Linear(images.shape[1], 10)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        momentum = 0.9 if optimizer == "momentum" else 0.0
        step = torch.optim.SGD(model.parameters(), lr=OPTIMIZERS[optimizer], momentum=momentum)
        for epoch in range(settings.epochs + 1):
            started = time.perf_counter()
            order = torch.randperm(n_samples, generator=generator)
            shuffled_images, shuffled_labels = images[order], labels[order]
            for start in range(0, n_samples, batch_size):
                batch = shuffled_images[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(
                    model(batch), shuffled_labels[start : start + batch_size]
                )
                step.zero_grad(set_to_none=True)
                loss.backward()
                step.step()
            if epoch:
                times.append(time.perf_counter() - started)
    torch.set_num_threads(available_cores())
    return times


# The original per-sample algorithm


def reference_epoch(
    images: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    batch_size: int,
    learning_rate: float,
) -> None:
    """The algorithm this project started from, kept to measure against: one sample at a
    time in a Python loop, the softmax normalised with Python's built-in ``sum``, a
    gradient per sample, and the parameters moved once per mini-batch by the mean of the
    per-sample gradients. Updates ``weights`` and ``bias`` in place."""
    for start in range(0, len(labels), batch_size):
        weight_grads, bias_grads = [], []
        for index in range(start, min(start + batch_size, len(labels))):
            image = images[index]
            scores = image @ weights + bias
            exps = np.exp(scores - scores.max())
            probs = exps / sum(exps)
            probs[labels[index]] -= 1.0
            weight_grads.append(np.outer(image, probs))
            bias_grads.append(probs)
        weights -= learning_rate * np.mean(weight_grads, axis=0)
        bias -= learning_rate * np.mean(bias_grads, axis=0)


def measure_reference(data: Data, settings: Settings, training: list[dict]) -> dict:
    """A fraction of an epoch of the reference algorithm, scaled to a whole epoch."""
    ours = {(row["optimizer"], row["batch_size"]): row["seconds"] for row in training}
    n_samples = len(data.train_labels)
    n_timed = max(100, int(n_samples * settings.reference_fraction))
    order = np.random.default_rng(0).permutation(n_samples)[:n_timed]
    images, labels = data.train_images[order], data.train_labels[order]
    rows = []
    for batch_size in (10, 100):
        if batch_size not in settings.batch_sizes:
            continue
        params = init_params("zeros")

        def run(batch_size=batch_size, params=params):
            reference_epoch(images, labels, params.weights, params.bias, batch_size, 0.1)

        seconds = median_seconds(run, settings.repeats) * n_samples / n_timed
        rows.append(
            {
                "batch_size": batch_size,
                "timed_samples": n_timed,
                "seconds": seconds,
                "reference_over_ours": seconds / ours["sgd", batch_size],
            }
        )
        logger.info("reference batch %s: %.2f s/epoch", batch_size, seconds)
    return {"rows": rows}


# Time to 92% test accuracy, against scikit-learn


class _Reached(Exception):
    pass


def seconds_to_accuracy(data: Data, target: float, max_epochs: int = 20) -> dict:
    """Wall time of ``fit`` from its start to the end of the first epoch whose test
    accuracy reaches ``target`` (evaluating only the test set)."""
    reached = {}

    def check(result, state) -> None:
        if result.metrics["test/accuracy"] >= target:
            reached.update(epoch=result.epoch, accuracy=result.metrics["test/accuracy"])
            raise _Reached

    started = time.perf_counter()
    try:
        fit(
            data.train_images,
            data.train_labels,
            {"test": (data.test_images, data.test_labels)},
            params=init_params("zeros"),
            optimizer=make_optimizer(RACE_CONFIG["optimizer"]),
            schedule=make_schedule("constant", RACE_CONFIG["learning_rate"]),
            batch_size=RACE_CONFIG["batch_size"],
            epochs=max_epochs,
            seed=0,
            on_epoch=check,
        )
    except _Reached:
        return {"seconds": time.perf_counter() - started, **reached}
    return {"seconds": None, "epoch": None, "accuracy": None}


def measure_accuracy_race(data: Data, settings: Settings) -> dict:
    ours = [seconds_to_accuracy(data, TARGET_ACCURACY) for _ in range(settings.repeats)]
    reached = [run["seconds"] for run in ours if run["seconds"] is not None]
    result = {
        "config": RACE_CONFIG,
        "target_accuracy": TARGET_ACCURACY,
        "seconds": statistics.median(reached) if reached else None,
        "epochs": ours[0]["epoch"],
        "test_accuracy": ours[0]["accuracy"],
    }
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        result["sklearn"] = {"skipped": "scikit-learn is not installed: pip install -e .[bench]"}
        return result

    model = LogisticRegression(solver="lbfgs", max_iter=settings.sklearn_max_iter)
    # scikit-learn's default of 100 iterations stops short of convergence on MNIST; the
    # warning says so, and the report gives the iterations and the accuracy reached.
    with blas_threads(available_cores()), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        started = time.perf_counter()
        model.fit(data.train_images, data.train_labels)
        fit_seconds = time.perf_counter() - started
    result["sklearn"] = {
        "fit_seconds": fit_seconds,
        "max_iter": settings.sklearn_max_iter,
        "iterations": int(np.max(model.n_iter_)),
        "test_accuracy": float(model.score(data.test_images, data.test_labels)),
    }
    if result["seconds"]:
        result["sklearn_over_ours"] = fit_seconds / result["seconds"]
    return result


# Data loading and start-up


def measure_data_loading(data_dir: Path, repeats: int) -> dict[str, float]:
    load_mnist(data_dir, download=False)  # make sure the cache is filled
    return {
        "gz_seconds": median_seconds(
            lambda: load_mnist(data_dir, download=False, cache=False), repeats
        ),
        "warm_seconds": median_seconds(lambda: load_mnist(data_dir, download=False), repeats),
    }


def measure_startup(repeats: int) -> dict:
    """``python -m mnist_lr.run --help`` wall time, and the slowest top-level imports of
    ``mnist_lr.run`` (``python -X importtime``, cumulative)."""
    command = [sys.executable, "-m", "mnist_lr.run", "--help"]
    seconds = median_seconds(
        lambda: subprocess.run(command, capture_output=True, check=True, cwd=SOURCE_DIR), repeats
    )
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import mnist_lr.run"],
        capture_output=True,
        text=True,
        cwd=SOURCE_DIR,
    )
    return {"run_help_seconds": seconds, "slowest_imports": _slowest_imports(completed.stderr)}


def _slowest_imports(importtime: str, count: int = 8) -> list[dict]:
    """The imports made directly by ``mnist_lr.run``, slowest first, with everything they
    pulled in (``-X importtime`` prints children before their parent, one level deeper)."""
    children: list[dict] = []
    for line in importtime.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth == 1:
            children.append({"module": name.strip(), "seconds": int(fields[1]) / 1e6})
        elif depth == 0 and name.strip() == "mnist_lr.run":
            return sorted(children, key=lambda child: -child["seconds"])[:count]
        elif depth == 0:
            children = []
    return []


# Tracking overhead and memory of whole runs


def measure_whole_runs(data_dir: Path, settings: Settings, repeats: int) -> dict:
    """A tracked run (``python -m mnist_lr.run``: MLflow in a new SQLite store, plots,
    artifacts) against the same training in a bare process (load, split, ``fit``), each a
    fresh process; the tracked run's peak resident memory from ``wait4``."""
    epochs = settings.tracking_epochs
    tracked, bare, peak = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats):
            folder = Path(scratch, f"run{repeat}")
            folder.mkdir()
            seconds, rss = _timed_process(
                [
                    sys.executable,
                    "-m",
                    "mnist_lr.run",
                    f"train.epochs={epochs}",
                    f"data.dir={data_dir}",
                    f"tracking.uri=sqlite:///{folder}/mlflow.db",
                    f"hydra.run.dir={folder}/outputs",
                ],
                folder,
            )
            tracked.append(seconds)
            peak.append(rss)
            bare_code = (
                f"from mnist_lr.bench import bare_run; bare_run({str(data_dir)!r}, {epochs})"
            )
            bare.append(_timed_process([sys.executable, "-c", bare_code], folder)[0])
    tracked_seconds, bare_seconds = statistics.median(tracked), statistics.median(bare)
    overhead = tracked_seconds - bare_seconds
    return {
        "tracking": {
            "epochs": epochs,
            "batch_size": 100,
            "tracked_run_seconds": tracked_seconds,
            "bare_run_seconds": bare_seconds,
            "overhead_seconds": overhead,
            "overhead_fraction": overhead / bare_seconds,
        },
        "memory": {"peak_rss_mb": max(peak) / 1024, "of": f"a tracked {epochs}-epoch run"},
    }


def bare_run(data_dir: str, epochs: int) -> None:
    """What a tracked run computes, without tracking: load, split, fit with evaluation."""
    mnist = load_mnist(data_dir, download=False)
    split = split_validation(mnist.train_images, mnist.train_labels, VAL_SIZE, 0)
    fit(
        split.train_images,
        split.train_labels,
        {
            "train": (split.train_images, split.train_labels),
            "val": (split.val_images, split.val_labels),
            "test": (mnist.test_images, mnist.test_labels),
        },
        params=init_params("zeros"),
        optimizer=make_optimizer("sgd"),
        schedule=make_schedule("constant", OPTIMIZERS["sgd"]),
        batch_size=100,
        epochs=epochs,
        seed=0,
    )


# Runs a command and prints its wall time and peak memory. A child's peak resident memory
# includes the moments between fork and exec, when it still counts its parent's pages: a
# small launcher keeps the benchmark's own memory (data, PyTorch) out of the figure.
_MEASURE_CHILD = """
import resource, subprocess, sys, time
started = time.perf_counter()
completed = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - started
if completed.returncode:
    sys.exit(completed.stderr.decode(errors="replace")[-4000:])
print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _timed_process(command: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak resident memory (KiB) of ``command`` in a fresh process."""
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE_CHILD, *command], cwd=cwd, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {completed.stderr}")
    seconds, peak_kib = completed.stdout.split()
    return float(seconds), int(peak_kib)


# Targets and the report


def check_targets(report: dict) -> list[dict]:
    """Issue 5's targets, each with the measured value (None when its part was skipped)."""
    training = {(row["optimizer"], row["batch_size"]): row for row in report["training"]}
    torch_rows = {
        (row["optimizer"], row["batch_size"]): row for row in report["torch"].get("rows", [])
    }
    reference = {row["batch_size"]: row for row in report["reference"]["rows"]}
    race = report["accuracy_race"]
    targets = [
        ("batch 100 training pass / streaming copy", "<=", 3.0,
         training.get(("sgd", 100), {}).get("times_copy_floor")),
        ("PyTorch eager / ours, batch 100", ">=", 4.0,
         torch_rows.get(("sgd", 100), {}).get("torch_over_ours")),
        ("PyTorch eager / ours, batch 10", ">=", 10.0,
         torch_rows.get(("sgd", 10), {}).get("torch_over_ours")),
        ("reference / ours, batch 10", ">=", 50.0,
         reference.get(10, {}).get("reference_over_ours")),
        ("sklearn lbfgs fit / ours to 92% test", ">=", 50.0, race.get("sklearn_over_ours")),
        ("warm data load (s)", "<=", 0.25, report["data_loading"]["warm_seconds"]),
        ("tracking overhead / bare run", "<=", 0.10,
         report["tracking"]["overhead_fraction"]),
        ("peak memory of a run (MB)", "<", 1024.0, report["memory"]["peak_rss_mb"]),
    ]  # fmt: skip
    checked = []
    for name, relation, bound, value in targets:
        if value is None:
            met = None
        elif relation == "<=":
            met = value <= bound
        elif relation == ">=":
            met = value >= bound
        else:
            met = value < bound
        checked.append({"target": name, "bound": f"{relation} {bound:g}", "value": value,
                        "met": met})  # fmt: skip
    return checked


def to_markdown(report: dict) -> str:
    machine = report["machine"]
    blas = (
        ", ".join(
            f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, "
            f"{lib['threading_layer']}, {lib['num_threads']} threads)"
            for lib in machine["blas"]
        )
        or machine["numpy_blas"]
    )
    floor = report["floor"]
    lines = [
        f"Machine: {machine['cores']} cores, {machine['cpu']}; Python {machine['python']}, "
        f"NumPy {machine['numpy']}, BLAS {blas}; load average at start "
        f"{machine['load_average'][0]:.2f}, at end {machine['load_average_at_end'][0]:.2f}. "
        f"Medians of {report['settings']['repeats']} "
        f"repeats{' (--quick: meaningless numbers)' if report['settings']['quick'] else ''}.",
        "",
        f"Floor: streaming copy of the training images {_ms(floor['copy_seconds'])} "
        f"({floor['copy_gb_per_second']:.1f} GB/s read+write); full-batch forward+backward "
        f"product {_ms(floor['matmul_seconds'])} ({floor['matmul_gflops']:.0f} GFLOP/s).",
        "",
        "| optimizer | batch | BLAS threads | training pass / epoch | x copy floor "
        "| x matmul floor | PyTorch eager | PyTorch / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    torch_rows = {
        (row["optimizer"], row["batch_size"]): row for row in report["torch"].get("rows", [])
    }
    for row in report["training"]:
        theirs = torch_rows.get((row["optimizer"], row["batch_size"]))
        lines.append(
            f"| {row['optimizer']} | {row['batch_size']} | {row['blas_threads']} "
            f"| {_ms(row['seconds'])} | {row['times_copy_floor']:.1f} "
            f"| {row['times_matmul_floor']:.2f} "
            f"| {_ms(theirs['seconds']) if theirs else 'skipped'} "
            f"| {_ratio(theirs['torch_over_ours']) if theirs else '-'} |"
        )
    if "skipped" in report["torch"]:
        lines += ["", f"PyTorch eager: skipped, {report['torch']['skipped']}."]
    lines += ["", "| measure | value |", "|---|---|"]
    for row in report["reference"]["rows"]:
        lines.append(
            f"| reference per-sample algorithm, batch {row['batch_size']} (sgd) "
            f"| {row['seconds']:.2f} s/epoch, {row['reference_over_ours']:.0f}x ours |"
        )
    race = report["accuracy_race"]
    sklearn = race["sklearn"]
    config = race["config"]
    lines.append(
        f"| time to {race['target_accuracy']:.1%} test accuracy ({config['optimizer']}, "
        f"lr {config['learning_rate']:g}, batch {config['batch_size']}) "
        f"| {_seconds(race['seconds'])} (epoch {race['epochs']}, {race['test_accuracy']}) |"
    )
    if "skipped" in sklearn:
        lines.append(f"| scikit-learn lbfgs | skipped: {sklearn['skipped']} |")
    else:
        lines.append(
            f"| scikit-learn LogisticRegression(lbfgs) fit | {sklearn['fit_seconds']:.1f} s "
            f"({sklearn['iterations']} iterations, test {sklearn['test_accuracy']:.4f}); "
            f"{race.get('sklearn_over_ours', float('nan')):.0f}x ours |"
        )
    loading = report["data_loading"]
    tracking = report["tracking"]
    startup = report["startup"]
    imports = ", ".join(
        f"{item['module']} {item['seconds']:.2f} s" for item in startup["slowest_imports"][:4]
    )
    lines += [
        f"| data loading: from .gz / warm cache | {loading['gz_seconds']:.3f} s / "
        f"{loading['warm_seconds']:.3f} s |",
        f"| tracked {tracking['epochs']}-epoch batch-100 run / bare run (own processes) "
        f"| {tracking['tracked_run_seconds']:.2f} s / {tracking['bare_run_seconds']:.2f} s: "
        f"overhead {tracking['overhead_seconds']:.2f} s = "
        f"{tracking['overhead_fraction']:.0%} |",
        f"| peak memory of {report['memory']['of']} | {report['memory']['peak_rss_mb']:.0f} MB |",
        f"| `python -m mnist_lr.run --help` | {startup['run_help_seconds']:.2f} s "
        f"(imports of mnist_lr.run: {imports}) |",
        "",
        "| target | bound | measured | met |",
        "|---|---|---|---|",
    ]
    for target in report["targets"]:
        value = target["value"]
        shown = "skipped" if value is None else f"{value:.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[target["met"]]
        lines.append(f"| {target['target']} | {target['bound']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def _ratio(value: float) -> str:
    return f"{value:.1f}x"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _seconds(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.3f} s"


def load_data(data_dir: Path, settings: Settings) -> Data:
    """The default run's training split (5000 held out) and the test set."""
    mnist = load_mnist(data_dir, download=False)
    split = split_validation(mnist.train_images, mnist.train_labels, VAL_SIZE, 0)
    rows = slice(None, settings.train_rows)
    return Data(
        np.ascontiguousarray(split.train_images[rows]),
        np.ascontiguousarray(split.train_labels[rows]),
        mnist.test_images,
        mnist.test_labels,
    )


def run_benchmark(data_dir: Path, settings: Settings, quick: bool) -> dict:
    data = load_data(data_dir, settings)
    report: dict = {
        "machine": describe_machine(),
        "settings": asdict(settings) | {"quick": quick, "train_samples": len(data.train_labels)},
    }
    report["floor"] = measure_floor(data, settings.repeats)
    report["training"] = measure_training(data, settings, report["floor"])
    report["torch"] = measure_torch(data, settings, report["training"])
    report["reference"] = measure_reference(data, settings, report["training"])
    report["accuracy_race"] = measure_accuracy_race(data, settings)
    report["data_loading"] = measure_data_loading(data_dir, settings.repeats)
    report["startup"] = measure_startup(settings.repeats)
    report |= measure_whole_runs(data_dir, settings, settings.repeats)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["targets"] = check_targets(report)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lr.bench",
        description="Benchmark the trainer on real MNIST against this machine's floor, "
        "PyTorch eager, the original per-sample algorithm and scikit-learn.",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of each measurement (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every part on a slice of the data, once: a smoke test, not a measurement",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the MNIST files (default: $MNIST_LR_DATA_DIR, else the cache)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("mnist_lr.trainer", "mnist_lr.data"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = Settings.quick() if args.quick else Settings.full(args.repeats)
    data_dir = (args.data_dir or default_data_dir()).expanduser().absolute()
    report = run_benchmark(data_dir, settings, args.quick)
    markdown = to_markdown(report)
    print(markdown)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown)


if __name__ == "__main__":
    main()
