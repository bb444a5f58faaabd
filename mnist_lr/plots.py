"""Figures of a run, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing is registered globally, so a figure is freed when it goes out of scope
and a long sweep in one process does not accumulate open figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SPLITS = ("train", "val", "test")
IMAGE_SIDE = 28


def new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_metric(history: Sequence[dict[str, float]], metric: str, title: str) -> Figure:
    """``metric`` (``loss`` or ``accuracy``) per epoch for each split present."""
    figure = new_figure()
    axes = figure.add_subplot()
    epochs = [row["epoch"] for row in history]
    for split in SPLITS:
        key = f"{split}/{metric}"
        if key in history[0]:
            axes.plot(epochs, [row[key] for row in history], marker="o", ms=3, label=split)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on short runs
    axes.set_ylabel("mean cross-entropy (nats)" if metric == "loss" else "accuracy")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def save_curves(history: Sequence[dict[str, float]], title: str, folder: Path) -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in ("loss", "accuracy"):
        path = folder / f"{metric}.png"
        plot_metric(history, metric, title).savefig(path, dpi=100)
        paths.append(path)
    return paths


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """``(n_classes, n_classes)`` counts: row = true digit, column = predicted digit."""
    pairs = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def plot_weight_templates(weights: np.ndarray, title: str) -> Figure:
    """Each digit's column of ``weights`` ``(784, 10)`` as a 28x28 image, on one colour
    scale centred at zero: red pixels vote for the digit, blue pixels against it."""
    limit = float(np.abs(weights).max()) or 1.0
    figure = new_figure(10, 4.6)
    grid = figure.subplots(2, 5)
    for digit, axes in enumerate(grid.flat):
        template = weights[:, digit].reshape(IMAGE_SIDE, IMAGE_SIDE)
        image = axes.imshow(template, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.set_title(str(digit))
        axes.set_axis_off()
    figure.colorbar(image, ax=grid, shrink=0.8, label="weight")
    figure.suptitle(f"weight templates: {title}", fontsize=9)
    return figure


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, title: str) -> Figure:
    """Test-set counts per (true, predicted) digit, each cell annotated."""
    counts = confusion_counts(labels, predicted)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    figure = new_figure(7, 6.2)
    axes = figure.add_subplot()
    # A log-like colour scale keeps the off-diagonal mistakes visible next to the
    # diagonal's hundreds.
    axes.imshow(np.log1p(counts), cmap="Blues")
    brightest = np.log1p(counts).max()
    for (row, column), count in np.ndenumerate(counts):
        dark_cell = np.log1p(count) > 0.6 * brightest
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if dark_cell else "black",
        )
    ticks = range(counts.shape[0])
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title(f"test confusion matrix, accuracy {accuracy:.4f}: {title}", fontsize=9)
    return figure


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    title: str,
    max_images: int = 36,
) -> Figure:
    """The first ``max_images`` wrongly predicted test images (``(n, 784)`` in [0, 1]), in
    test-set order, each titled with its true and predicted digit."""
    wrong = np.flatnonzero(labels != predicted)
    shown = wrong[:max_images]
    columns = 9
    rows = max(1, -(-len(shown) // columns))
    figure = new_figure(1.1 * columns, 1.3 * rows + 0.5)
    figure.suptitle(
        f"{len(shown)} of {len(wrong)} misclassified test images (true -> predicted): {title}",
        fontsize=9,
    )
    if len(shown) == 0:
        figure.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return figure
    for position, index in enumerate(shown, start=1):
        axes = figure.add_subplot(rows, columns, position)
        axes.imshow(images[index].reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray_r", vmin=0, vmax=1)
        axes.set_title(f"{labels[index]} -> {predicted[index]}", fontsize=8, color="firebrick")
        axes.set_axis_off()
    return figure


def save_model_pictures(
    weights: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    title: str,
    folder: Path,
) -> list[Path]:
    """Write ``weights.png``, ``confusion_matrix.png`` and ``misclassified.png`` into
    ``folder`` from the weights ``(784, 10)`` and the test images ``(n, 784)``, labels and
    predictions ``(n,)``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "weights.png": plot_weight_templates(weights, title),
        "confusion_matrix.png": plot_confusion_matrix(labels, predicted, title),
        "misclassified.png": plot_misclassified(images, labels, predicted, title),
    }
    paths = []
    for file_name, figure in figures.items():
        figure.savefig(folder / file_name, dpi=100)
        paths.append(folder / file_name)
    return paths
