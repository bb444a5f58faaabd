"""Tests for mnist_lr.schedules: the rate per epoch, the plateau rule, and saving the state."""

from __future__ import annotations

import re

import pytest

from mnist_lr.schedules import Constant, Cosine, Exponential, Plateau, Step, make_schedule


def rates(schedule, epochs: int) -> list[float]:
    return [schedule.rate(epoch) for epoch in range(1, epochs + 1)]


def observe_all(schedule: Plateau, values: list[float]) -> list[float]:
    """The rate used in each epoch when the monitored metric takes ``values`` in turn."""
    used = []
    for epoch, value in enumerate(values, start=1):
        used.append(schedule.rate(epoch))
        schedule.observe(epoch, {schedule.monitor: value, "train/loss": 1.0})
    return used


# fixed schedules


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (Constant(0.1), [0.1, 0.1, 0.1, 0.1]),
        (Step(0.1, decay_factor=0.5, step_epochs=2), [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        (Step(0.2, decay_factor=0.1, step_epochs=1), [0.2, 0.02, 0.002]),
        (Exponential(0.1, decay_factor=0.9), [0.1, 0.09, 0.081, 0.0729]),
        # (1 + cos(pi k / 4)) / 2 for k = 0..3: 1, 0.853553, 0.5, 0.146447
        (Cosine(1.0, epochs=4, min_lr=0.0), [1.0, 0.8535534, 0.5, 0.1464466]),
        # min_lr + (1 - min_lr) * the above
        (Cosine(1.0, epochs=4, min_lr=0.2), [1.0, 0.8828427, 0.6, 0.3171573]),
    ],
    ids=["constant", "step-2", "step-1", "exponential", "cosine", "cosine-min-lr"],
)
def test_schedule_rates_per_epoch(schedule, expected):
    assert rates(schedule, len(expected)) == pytest.approx(expected, rel=1e-6)


def test_step_defaults_halve_every_five_epochs():
    schedule = Step(0.1)

    assert [schedule.rate(epoch) for epoch in (1, 5, 6, 10, 11)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025]
    )


def test_cosine_reaches_min_lr_one_epoch_after_the_last():
    schedule = Cosine(0.5, epochs=10, min_lr=0.01)

    assert schedule.rate(11) == pytest.approx(0.01)
    assert schedule.rate(10) > 0.01


@pytest.mark.parametrize(
    "schedule", [Constant(0.1), Step(0.1), Exponential(0.1), Cosine(0.1, epochs=3)]
)
def test_fixed_schedule_ignores_observed_metrics(schedule):
    before = rates(schedule, 3)

    schedule.observe(1, {"val/accuracy": 0.1})
    schedule.observe(2, {"val/accuracy": 0.1})

    assert rates(schedule, 3) == before


# plateau


def test_plateau_rates_follow_improvements():
    schedule = Plateau(0.1, decay_factor=0.5, threshold=0.25, monitor="val/accuracy")

    # +0.25 (not below the threshold), +0.125 (below), -0.375 (below)
    used = observe_all(schedule, [0.5, 0.75, 0.875, 0.5])

    assert used == pytest.approx([0.1, 0.1, 0.1, 0.05])
    assert schedule.rate(5) == pytest.approx(0.025)


@pytest.mark.parametrize(
    "improvement, expected_rate",
    [(-0.25, 0.075), (0.0, 0.075), (0.125, 0.075), (0.25, 0.1), (0.5, 0.1)],
)
def test_plateau_decays_only_below_threshold(improvement, expected_rate):
    schedule = Plateau(0.1, decay_factor=0.75, threshold=0.25, monitor="val/accuracy")

    observe_all(schedule, [0.25, 0.25 + improvement])

    assert schedule.rate(3) == pytest.approx(expected_rate)


@pytest.mark.parametrize("first_value", [0.0, 0.5, 1.0])
def test_plateau_first_epoch_never_decays(first_value):
    schedule = Plateau(0.1, decay_factor=0.5, threshold=0.001)

    schedule.observe(1, {"val/accuracy": first_value})

    assert schedule.rate(2) == 0.1


def test_plateau_zero_threshold_decays_only_when_metric_falls():
    schedule = Plateau(1.0, decay_factor=0.5, threshold=0.0, monitor="test/accuracy")

    # +0.0625, +0 (not below a threshold of 0), -0.0625
    used = observe_all(schedule, [0.5, 0.5625, 0.5625, 0.5])

    assert used == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert schedule.rate(5) == 0.5


def test_plateau_missing_monitor_raises():
    schedule = Plateau(0.1, monitor="val/accuracy")
    expected = (
        "schedule.monitor='val/accuracy' is not among this run's metrics "
        "['test/accuracy', 'train/accuracy']; choose one of them"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        schedule.observe(1, {"train/accuracy": 0.9, "test/accuracy": 0.8})


def test_plateau_loss_monitor_does_not_decay_while_loss_falls():
    schedule = Plateau(0.1, decay_factor=0.5, threshold=0.001, monitor="val/loss")

    used = observe_all(schedule, [0.9, 0.5, 0.3])

    assert used == pytest.approx([0.1, 0.1, 0.1])


def test_plateau_loss_monitor_decays_when_loss_stalls_or_rises():
    schedule = Plateau(0.1, decay_factor=0.5, threshold=0.001, monitor="val/loss")

    used = observe_all(schedule, [0.9, 0.8995, 0.95, 0.5])

    assert used == pytest.approx([0.1, 0.1, 0.05, 0.025])


# state_dict / load_state_dict


def test_plateau_state_dict_round_trip():
    original = Plateau(0.1, decay_factor=0.5, threshold=0.25, monitor="val/accuracy")
    observe_all(original, [0.5, 0.625])
    saved = original.state_dict()

    restored = Plateau(0.1, decay_factor=0.5, threshold=0.25, monitor="val/accuracy")
    restored.load_state_dict(saved)

    assert saved == {"current": 0.05, "previous": 0.625}
    assert restored.rate(3) == original.rate(3) == 0.05
    for schedule in (original, restored):
        schedule.observe(3, {"val/accuracy": 1.0})  # +0.375: no decay
    assert restored.rate(4) == original.rate(4) == 0.05


def test_plateau_state_dict_is_a_snapshot():
    schedule = Plateau(0.1, decay_factor=0.5, threshold=0.25)
    observe_all(schedule, [0.5])
    saved = schedule.state_dict()

    observe_all(schedule, [0.5])

    assert saved == {"current": 0.1, "previous": 0.5}
    assert schedule.rate(3) == 0.05


def test_plateau_fresh_state_dict_round_trip():
    restored = Plateau(0.3)
    restored.load_state_dict(Plateau(0.3).state_dict())

    restored.observe(1, {"val/accuracy": 0.0})

    assert restored.rate(2) == 0.3


@pytest.mark.parametrize(
    "schedule", [Constant(0.1), Step(0.1, 0.5, 1), Exponential(0.1), Cosine(0.1, epochs=5)]
)
def test_fixed_schedule_state_dict_round_trip(schedule):
    before = rates(schedule, 5)

    schedule.load_state_dict(schedule.state_dict())

    assert schedule.state_dict() == {}
    assert rates(schedule, 5) == before


# make_schedule


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("constant", {}, Constant(0.1)),
        ("step", {"decay_factor": 0.5, "step_epochs": 3}, Step(0.1, 0.5, 3)),
        ("exponential", {"decay_factor": 0.8}, Exponential(0.1, 0.8)),
        ("cosine", {"epochs": 15, "min_lr": 0.001}, Cosine(0.1, 15, 0.001)),
        ("plateau", {"monitor": "test/accuracy"}, Plateau(0.1, monitor="test/accuracy")),
    ],
)
def test_make_schedule_builds_named_schedule(name, options, expected):
    assert make_schedule(name, 0.1, **options) == expected


def test_make_schedule_rejects_unknown_name():
    expected = (
        "schedule.name must be one of ['constant', 'cosine', 'exponential', 'plateau', "
        "'step'], got 'linear'"
    )

    with pytest.raises(ValueError, match=re.escape(expected)):
        make_schedule("linear", 0.1)
