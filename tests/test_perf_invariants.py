"""Results that speed work must not change: pinned metrics of seeded runs, and determinism.

The pinned values were recorded before any optimisation of the trainer. An optimisation that
changes them changes what the trainer computes; one that only changes float rounding (a
different BLAS kernel or summation order) stays within the tolerance here. Losses are compared
to 1e-6 relative: the BLAS thread count alone moves them by about 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest

from mnist_lr.data import load_mnist, split_validation
from mnist_lr.model import init_params
from mnist_lr.optimizers import make_optimizer
from mnist_lr.schedules import make_schedule
from mnist_lr.trainer import fit

LOSS_RTOL = 1e-6
TIMING_KEYS = ("epoch_seconds", "eval_seconds")

# 2 epochs, batches of 100, zero init, seed 0, 5000 validation samples (val_seed 0).
PINNED_REAL_MNIST = {
    ("sgd", 0.1): [
        {
            "train/loss": 0.3856889748457163,
            "train/accuracy": 0.8946727272727273,
            "val/loss": 0.4007719477836741,
            "val/accuracy": 0.8938,
            "test/loss": 0.3674504952407806,
            "test/accuracy": 0.9013,
        },
        {
            "train/loss": 0.3424877834687158,
            "train/accuracy": 0.9055090909090909,
            "val/loss": 0.3572969463921305,
            "val/accuracy": 0.9024,
            "test/loss": 0.3275590967996584,
            "test/accuracy": 0.9114,
        },
    ],
    ("momentum", 0.01): [
        {
            "train/loss": 0.3844382913622836,
            "train/accuracy": 0.8946363636363637,
            "val/loss": 0.4002251473946453,
            "val/accuracy": 0.8928,
            "test/loss": 0.36675211168367167,
            "test/accuracy": 0.9022,
        },
        {
            "train/loss": 0.3417932183187619,
            "train/accuracy": 0.9062181818181818,
            "val/loss": 0.35655812076396104,
            "val/accuracy": 0.9032,
            "test/loss": 0.32698698233188245,
            "test/accuracy": 0.9121,
        },
    ],
}


@pytest.fixture(scope="module")
def real_mnist_sets(mnist_dir):
    mnist = load_mnist(mnist_dir, download=False)
    split = split_validation(mnist.train_images, mnist.train_labels, 5000, 0)
    eval_sets = {
        "train": (split.train_images, split.train_labels),
        "val": (split.val_images, split.val_labels),
        "test": (mnist.test_images, mnist.test_labels),
    }
    return split.train_images, split.train_labels, eval_sets


def train(images, labels, eval_sets, optimizer, learning_rate, *, batch_size=100, epochs=2):
    params = init_params("zeros", n_features=images.shape[1], n_classes=10)
    results = fit(
        images,
        labels,
        eval_sets,
        params=params,
        optimizer=make_optimizer(optimizer),
        schedule=make_schedule("constant", learning_rate),
        batch_size=batch_size,
        epochs=epochs,
        seed=0,
    )
    metrics = [
        {key: value for key, value in result.metrics.items() if key not in TIMING_KEYS}
        for result in results
    ]
    return metrics, params


@pytest.mark.mnist
@pytest.mark.parametrize(("optimizer", "learning_rate"), list(PINNED_REAL_MNIST))
def test_fit_real_mnist_matches_pinned_metrics(real_mnist_sets, optimizer, learning_rate):
    images, labels, eval_sets = real_mnist_sets
    metrics, _ = train(images, labels, eval_sets, optimizer, learning_rate)

    for epoch_metrics, expected in zip(
        metrics, PINNED_REAL_MNIST[optimizer, learning_rate], strict=True
    ):
        for key, value in expected.items():
            if key.endswith("accuracy"):
                assert epoch_metrics[key] == value, key
            else:
                assert epoch_metrics[key] == pytest.approx(value, rel=LOSS_RTOL), key


def small_data(n_samples=230, n_features=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n_samples)
    centres = rng.normal(0.0, 1.0, (10, n_features))
    images = centres[labels] + rng.normal(0.0, 1.0, (n_samples, n_features))
    return images.astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_size", [1, 10, 32, None])
def test_fit_metrics_identical_run_to_run(optimizer, batch_size):
    images, labels = small_data()
    eval_sets = {"train": (images, labels)}

    first, first_params = train(
        images, labels, eval_sets, optimizer, 0.05, batch_size=batch_size, epochs=3
    )
    second, second_params = train(
        images, labels, eval_sets, optimizer, 0.05, batch_size=batch_size, epochs=3
    )

    assert first == second
    np.testing.assert_array_equal(first_params.weights, second_params.weights)
    np.testing.assert_array_equal(first_params.bias, second_params.bias)
