"""Tests for mnist_lr.trainer: batching, determinism, exact resumption, divergence, log line."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_lr.model import Params, init_params, loss_and_grads
from mnist_lr.optimizers import make_optimizer
from mnist_lr.schedules import make_schedule
from mnist_lr.trainer import (
    DivergenceError,
    EpochResult,
    TrainState,
    fit,
    format_epoch,
    iterate_batches,
)

N_FEATURES = 12
N_CLASSES = 3
TIMING_KEYS = ("epoch_seconds", "eval_seconds")


def make_data(n_samples: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 images ``(n_samples, 12)`` whose class shifts the mean, int64 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n_samples)
    centres = rng.normal(0.0, 1.0, (N_CLASSES, N_FEATURES))
    images = centres[labels] + rng.normal(0.0, 1.0, (n_samples, N_FEATURES))
    return images.astype(np.float32), labels.astype(np.int64)


def eval_sets_for(images, labels) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    val_images, val_labels = make_data(20, seed=1)
    return {"train": (images, labels), "val": (val_images, val_labels)}


def run_fit(
    optimizer="sgd",
    schedule="constant",
    *,
    lr=0.05,
    epochs=3,
    seed=0,
    batch_size=8,
    state=None,
    on_epoch=None,
    data=None,
    schedule_options=None,
    weight_decay=0.0,
):
    images, labels = data if data is not None else make_data()
    return fit(
        images,
        labels,
        eval_sets_for(images, labels),
        params=init_params("zeros", n_features=N_FEATURES, n_classes=N_CLASSES),
        optimizer=make_optimizer(optimizer),
        schedule=make_schedule(schedule, lr, **(schedule_options or {})),
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        weight_decay=weight_decay,
        state=state,
        on_epoch=on_epoch,
    )


def without_timings(results: list[EpochResult]) -> list[tuple[int, dict[str, float]]]:
    """Epoch and metrics with the wall-clock fields removed (they differ run to run)."""
    return [
        (result.epoch, {k: v for k, v in result.metrics.items() if k not in TIMING_KEYS})
        for result in results
    ]


# iterate_batches


@pytest.mark.parametrize(
    "n_samples, batch_size, expected",
    [
        (10, 4, [(0, 4), (4, 8), (8, 10)]),
        (10, 5, [(0, 5), (5, 10)]),
        (10, 10, [(0, 10)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
        (7, 6, [(0, 6), (6, 7)]),
    ],
)
def test_iterate_batches_bounds(n_samples, batch_size, expected):
    assert list(iterate_batches(n_samples, batch_size)) == expected


@given(n_samples=st.integers(1, 500), data=st.data())
def test_iterate_batches_covers_every_sample_once(n_samples, data):
    batch_size = data.draw(st.integers(1, n_samples))

    batches = list(iterate_batches(n_samples, batch_size))

    covered = np.concatenate([np.arange(start, stop) for start, stop in batches])
    np.testing.assert_array_equal(covered, np.arange(n_samples))
    assert all(stop - start == batch_size for start, stop in batches[:-1])
    assert 1 <= batches[-1][1] - batches[-1][0] <= batch_size
    assert len(batches) == -(-n_samples // batch_size)


# fit: batch sizes


def manual_sgd(images, labels, seed, batch_size, lr, epochs):
    """Plain SGD written out directly, with the same seeded shuffle as the trainer."""
    params = init_params("zeros", n_features=N_FEATURES, n_classes=N_CLASSES)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(labels), batch_size):
            rows = order[start : start + batch_size]
            _, grad_weights, grad_bias = loss_and_grads(params, images[rows], labels[rows])
            params.weights -= lr * grad_weights
            params.bias -= lr * grad_bias
    return params


@pytest.mark.parametrize("batch_size", [1, 7, 10])
def test_fit_matches_hand_written_sgd(batch_size):
    images, labels = make_data(10)
    captured = []

    fit(
        images,
        labels,
        {},
        params=init_params("zeros", n_features=N_FEATURES, n_classes=N_CLASSES),
        optimizer=make_optimizer("sgd"),
        schedule=make_schedule("constant", 0.1),
        batch_size=batch_size,
        epochs=2,
        seed=3,
        on_epoch=lambda result, state: captured.append(state.params.copy()),
    )

    expected = manual_sgd(images, labels, seed=3, batch_size=batch_size, lr=0.1, epochs=2)
    np.testing.assert_allclose(captured[-1].weights, expected.weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(captured[-1].bias, expected.bias, rtol=1e-6, atol=1e-7)


def test_fit_full_batch_none_equals_batch_of_all_samples():
    data = make_data(30)

    full = run_fit(batch_size=None, data=data)
    explicit = run_fit(batch_size=30, data=data)

    assert without_timings(full) == without_timings(explicit)


def test_fit_reports_every_metric_each_epoch():
    results = run_fit(epochs=2)

    assert [result.epoch for result in results] == [1, 2]
    assert list(results[0].metrics) == [
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "learning_rate",
        "epoch_seconds",
        "eval_seconds",
    ]
    assert results[1].metrics["train/loss"] < results[0].metrics["train/loss"] < np.log(3)


@pytest.mark.parametrize("batch_size", [0, -1, 61, 1000])
def test_fit_rejects_batch_size_outside_training_set(batch_size):
    expected = f"batch_size.size must be between 1 and the 60 training samples, got {batch_size}"

    with pytest.raises(ValueError, match=re.escape(expected)):
        run_fit(batch_size=batch_size)


# fit: determinism


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_fit_same_seed_gives_identical_metrics(optimizer):
    first = run_fit(optimizer, seed=5)
    second = run_fit(optimizer, seed=5)

    assert without_timings(first) == without_timings(second)


def test_fit_different_seeds_give_different_metrics():
    first = run_fit(seed=1)
    second = run_fit(seed=2)

    assert without_timings(first) != without_timings(second)
    # both learnt something nonetheless
    assert first[-1].metrics["train/loss"] < np.log(3)
    assert second[-1].metrics["train/loss"] < np.log(3)


# fit: resumption


RESUME_CASES = [
    ("sgd", "constant", {}),
    # threshold 1: every epoch after the first decays, so epoch 3 needs the saved rate
    ("momentum", "plateau", {"threshold": 1.0, "decay_factor": 0.5}),
    ("adam", "constant", {}),
    ("nesterov", "step", {"decay_factor": 0.5, "step_epochs": 1}),
]


@pytest.mark.parametrize("optimizer, schedule, options", RESUME_CASES)
def test_fit_resumed_from_epoch_2_matches_uninterrupted_run(optimizer, schedule, options):
    straight = run_fit(optimizer, schedule, epochs=4, schedule_options=options, seed=9)
    saved: list[TrainState] = []
    run_fit(
        optimizer,
        schedule,
        epochs=2,
        schedule_options=options,
        seed=9,
        on_epoch=lambda result, state: saved.append(copy.deepcopy(state)),
    )

    assert saved[-1].epoch == 2

    resumed = run_fit(optimizer, schedule, epochs=4, schedule_options=options, state=saved[-1])

    assert [result.epoch for result in resumed] == [3, 4]
    assert without_timings(resumed) == without_timings(straight[2:])


def test_fit_resumed_plateau_continues_at_decayed_rate():
    options = {"threshold": 1.0, "decay_factor": 0.5}
    saved: list[TrainState] = []
    run_fit(
        "momentum",
        "plateau",
        lr=0.08,
        epochs=2,
        schedule_options=options,
        on_epoch=lambda result, state: saved.append(copy.deepcopy(state)),
    )

    resumed = run_fit(
        "momentum", "plateau", lr=0.08, epochs=4, schedule_options=options, state=saved[-1]
    )

    # 0.08 in epochs 1 and 2 (the first never decays), then halved after each epoch
    assert [result.metrics["learning_rate"] for result in resumed] == [0.04, 0.02]


def test_fit_state_already_complete_trains_nothing():
    saved: list[TrainState] = []
    run_fit(epochs=2, on_epoch=lambda result, state: saved.append(copy.deepcopy(state)))
    weights_before = saved[-1].params.weights.copy()

    results = run_fit(epochs=2, state=saved[-1])

    assert results == []
    np.testing.assert_array_equal(saved[-1].params.weights, weights_before)


# fit: divergence


def make_conflicting_data() -> tuple[np.ndarray, np.ndarray]:
    """Every image appears twice with different labels, scaled up to 1e10: no weights fit
    it, so the gradient never vanishes and a huge rate overflows float32."""
    images, labels = make_data(30)
    images = np.concatenate([images, images]) * np.float32(1e10)
    labels = np.concatenate([labels, (labels + 1) % N_CLASSES])
    return images, labels


@pytest.mark.parametrize(
    "schedule, options, epoch",
    [
        ("constant", {}, 1),
        # 1e-3 for two epochs, then 1e-3 * 1e33 = 1e30 from epoch 3
        ("step", {"decay_factor": 1e33, "step_epochs": 2}, 3),
    ],
)
def test_fit_huge_learning_rate_raises_divergence_error(schedule, options, epoch):
    rate = 1e30
    expected = rf"diverged in epoch {epoch} at learning rate 1e\+30"

    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(DivergenceError, match=expected) as raised,
    ):
        run_fit(
            schedule=schedule,
            schedule_options=options,
            lr=rate if schedule == "constant" else 1e-3,
            epochs=4,
            data=make_conflicting_data(),
        )

    assert raised.value.epoch == epoch
    assert raised.value.learning_rate == pytest.approx(rate)
    assert "Lower optimizer.lr" in str(raised.value)


def test_fit_divergence_reports_nothing_for_that_epoch():
    reported = []

    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(DivergenceError):
        run_fit(
            schedule="step",
            lr=1e-3,
            schedule_options={"decay_factor": 1e33, "step_epochs": 2},
            epochs=4,
            data=make_conflicting_data(),
            on_epoch=lambda result, state: reported.append(result.epoch),
        )

    assert reported == [1, 2]


# format_epoch


def test_format_epoch_fixed_fields():
    result = EpochResult(
        3,
        {
            "train/loss": 0.123456,
            "train/accuracy": 0.9,
            "learning_rate": 0.0025,
            "epoch_seconds": 1.23456,
            "eval_seconds": 0.5,
        },
    )

    line = format_epoch(result, 15)

    assert line == (
        "epoch=3/15 train/loss=0.1235 train/accuracy=0.9000 learning_rate=0.0025 "
        "epoch_seconds=1.235 eval_seconds=0.500"
    )


def test_format_epoch_one_line_of_key_value_fields():
    results = run_fit(epochs=2)

    line = format_epoch(results[-1], 2)

    assert "\n" not in line
    fields = line.split(" ")
    assert fields[0] == "epoch=2/2"
    assert all(re.fullmatch(r"[a-z_/]+=[-0-9.e+]+", field) for field in fields[1:])
    assert [field.split("=")[0] for field in fields[1:]] == list(results[-1].metrics)


def test_fit_keeps_params_passed_in_as_trained_params():
    images, labels = make_data()
    params = init_params("zeros", n_features=N_FEATURES, n_classes=N_CLASSES)
    states: list[TrainState] = []

    fit(
        images,
        labels,
        {},
        params=params,
        optimizer=make_optimizer("sgd"),
        schedule=make_schedule("constant", 0.1),
        batch_size=8,
        epochs=1,
        seed=0,
        on_epoch=lambda result, state: states.append(state),
    )

    assert states[0].params is params
    assert isinstance(params, Params)
    assert params.weights.any()
