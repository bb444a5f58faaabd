"""Checkpoints: a saved TrainState loads back identical, and training resumed from one
reaches exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mnist_lr.checkpoint import load_state, save_state
from mnist_lr.model import init_params
from mnist_lr.optimizers import make_optimizer
from mnist_lr.schedules import make_schedule
from mnist_lr.trainer import fit


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((300, 20), dtype=np.float32)
    labels = (images[:, :3].argmax(axis=1)).astype(np.int64)
    return images, labels


def _fit(epochs, state=None, on_epoch=None, optimizer="adam", schedule="plateau"):
    images, labels = _problem()
    options = {"momentum": 0.9} if optimizer in ("momentum", "nesterov") else {}
    schedule_options = {"monitor": "train/accuracy"} if schedule == "plateau" else {}
    return fit(
        images,
        labels,
        {"train": (images, labels)},
        params=init_params("normal", 1, n_features=20, n_classes=3),
        optimizer=make_optimizer(optimizer, **options),
        schedule=make_schedule(schedule, 0.05, **schedule_options),
        batch_size=32,
        epochs=epochs,
        seed=7,
        state=state,
        on_epoch=on_epoch,
    )


def _metrics(results):
    return [{k: v for k, v in r.metrics.items() if not k.endswith("seconds")} for r in results]


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [("sgd", "constant"), ("momentum", "plateau"), ("nesterov", "step"), ("adam", "plateau")],
)
def test_checkpoint_resume_from_file_matches_uninterrupted_run(tmp_path, optimizer, schedule):
    straight = _fit(5, optimizer=optimizer, schedule=schedule)
    path = tmp_path / "state.npz"

    def keep_epoch_2(result, state):
        if result.epoch == 2:
            save_state(state, path)

    _fit(2, on_epoch=keep_epoch_2, optimizer=optimizer, schedule=schedule)
    state = load_state(path)
    resumed = _fit(5, state=state, optimizer=optimizer, schedule=schedule)

    assert state.epoch == 5
    assert [r.epoch for r in resumed] == [3, 4, 5]
    assert _metrics(resumed) == _metrics(straight)[2:]


def test_checkpoint_round_trip_keeps_every_field(tmp_path):
    captured = []
    _fit(3, on_epoch=lambda result, state: captured.append(copy.deepcopy(state)))
    original = captured[-1]
    save_state(original, tmp_path / "state.npz")
    loaded = load_state(tmp_path / "state.npz")

    assert loaded.epoch == 3
    assert np.array_equal(loaded.params.weights, original.params.weights)
    assert loaded.params.weights.dtype == np.float32
    assert sorted(loaded.optimizer_state) == sorted(original.optimizer_state)
    assert int(loaded.optimizer_state["step"]) == int(original.optimizer_state["step"])
    assert loaded.schedule_state == original.schedule_state
    assert loaded.rng_state == original.rng_state


def test_checkpoint_save_leaves_no_temporary_file(tmp_path):
    captured = []
    _fit(1, on_epoch=lambda result, state: captured.append(state))
    save_state(captured[0], tmp_path / "state.npz")
    save_state(captured[0], tmp_path / "state.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def test_checkpoint_load_rejects_a_file_that_is_not_one(tmp_path):
    path = tmp_path / "state.npz"
    path.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(ValueError, match="is not a mnist-lr checkpoint"):
        load_state(path)
