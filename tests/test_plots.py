"""Tests for mnist_lr.plots: the pictures of a run, drawn headless and freed."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mnist_lr.plots import (
    confusion_counts,
    plot_misclassified,
    plot_weight_templates,
    save_model_pictures,
)

PICTURES = ("weights.png", "confusion_matrix.png", "misclassified.png")


def make_predictions(n_samples: int = 60, n_wrong: int = 7, seed: int = 0):
    """Random images ``(n, 784)`` in [0, 1], labels, and predictions wrong at ``n_wrong``
    known positions."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, (n_samples, 784)).astype(np.float32)
    labels = rng.integers(0, 10, n_samples)
    predicted = labels.copy()
    wrong = rng.choice(n_samples, n_wrong, replace=False)
    predicted[wrong] = (labels[wrong] + 1) % 10
    return images, labels, predicted, np.sort(wrong)


def live_figures() -> int:
    gc.collect()
    return sum(isinstance(thing, Figure) for thing in gc.get_objects())


def test_confusion_counts_rows_are_true_digits_columns_predictions():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 2, 0])

    counts = confusion_counts(labels, predicted, n_classes=3)

    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert counts.sum(axis=1).tolist() == np.bincount(labels).tolist()


def test_plot_weight_templates_one_28x28_image_per_digit():
    weights = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)

    figure = plot_weight_templates(weights, "title")

    panels = [axes for axes in figure.axes if axes.images]
    assert [axes.get_title() for axes in panels] == [str(digit) for digit in range(10)]
    assert all(axes.images[0].get_array().shape == (28, 28) for axes in panels)
    np.testing.assert_array_equal(panels[3].images[0].get_array(), weights[:, 3].reshape(28, 28))


def test_plot_misclassified_titles_true_and_predicted_in_test_order():
    images, labels, predicted, wrong = make_predictions()

    figure = plot_misclassified(images, labels, predicted, "title", max_images=5)

    titles = [axes.get_title() for axes in figure.axes]
    assert titles == [f"{labels[i]} -> {predicted[i]}" for i in wrong[:5]]
    assert "5 of 7 misclassified" in figure.get_suptitle()


def test_plot_misclassified_without_mistakes_says_so():
    images, labels, _, _ = make_predictions()

    figure = plot_misclassified(images, labels, labels.copy(), "title")

    assert figure.axes == []
    assert "no misclassified test images" in [text.get_text() for text in figure.texts]


def test_save_model_pictures_writes_three_readable_pngs(tmp_path: Path):
    images, labels, predicted, _ = make_predictions()
    weights = np.random.default_rng(1).normal(size=(784, 10))

    paths = save_model_pictures(weights, images, labels, predicted, "title", tmp_path / "plots")

    assert [path.name for path in paths] == list(PICTURES)
    for path in paths:
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            assert picture.size[0] >= 600


def test_save_model_pictures_frees_every_figure(tmp_path: Path):
    images, labels, predicted, _ = make_predictions()
    weights = np.zeros((784, 10))
    before = live_figures()

    for _ in range(3):
        save_model_pictures(weights, images, labels, predicted, "title", tmp_path)

    assert live_figures() == before


def test_pictures_are_drawn_without_pyplot(tmp_path: Path):
    """Headless: no GUI backend, no pyplot registry holding figures."""
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from mnist_lr.plots import save_model_pictures\n"
        "x = np.zeros((3, 784)); y = np.array([1, 2, 3])\n"
        f"save_model_pictures(np.zeros((784, 10)), x, y, y[::-1], 't', Path({str(tmp_path)!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    env["MPLBACKEND"] = "Agg"

    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(PICTURES)


@pytest.mark.mnist
@pytest.mark.slow
def test_run_logs_the_pictures_as_artifacts(mnist_dir: Path, tmp_path: Path):
    """Every single run carries the curves and the three model pictures."""
    store = tmp_path / "mlflow.db"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lr.run",
            "train.epochs=1",
            f"data.dir={mnist_dir}",
            f"tracking.uri=sqlite:///{store}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    plots = sorted(path.name for path in tmp_path.glob("mlruns/*/*/artifacts/plots/*.png"))
    assert plots == sorted(("accuracy.png", "loss.png", *PICTURES))
