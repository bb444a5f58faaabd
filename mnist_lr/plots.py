"""Figures of a run, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing is registered globally, so a figure is freed when it goes out of scope
and a long sweep in one process does not accumulate open figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SPLITS = ("train", "val", "test")


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
