"""Learning-rate schedules: each answers "what rate for this epoch" from what it observed.

Epochs are 1-based. ``observe`` is called after every epoch with that epoch's metrics; only
the plateau schedule uses them. ``state_dict``/``load_state_dict`` let a resumed run carry on
with the same rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Constant:
    learning_rate: float

    def rate(self, epoch: int) -> float:
        return self.learning_rate

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


@dataclass
class Step(Constant):
    """Multiply the rate by ``decay_factor`` every ``step_epochs`` epochs."""

    decay_factor: float = 0.5
    step_epochs: int = 5

    def rate(self, epoch: int) -> float:
        return self.learning_rate * self.decay_factor ** ((epoch - 1) // self.step_epochs)


@dataclass
class Exponential(Constant):
    """Multiply the rate by ``decay_factor`` after every epoch."""

    decay_factor: float = 0.9

    def rate(self, epoch: int) -> float:
        return self.learning_rate * self.decay_factor ** (epoch - 1)


@dataclass
class Cosine(Constant):
    """Half a cosine from ``learning_rate`` at epoch 1 towards ``min_lr`` after ``epochs``."""

    epochs: int = 15
    min_lr: float = 0.0

    def rate(self, epoch: int) -> float:
        progress = (epoch - 1) / self.epochs
        return self.min_lr + 0.5 * (self.learning_rate - self.min_lr) * (
            1 + math.cos(math.pi * progress)
        )


@dataclass
class Plateau(Constant):
    """Multiply the rate by ``decay_factor`` when ``monitor`` improves by less than
    ``threshold`` from one epoch to the next (the reference rule). An accuracy improves by
    rising, a loss by falling."""

    decay_factor: float = 0.75
    threshold: float = 0.001
    monitor: str = "val/accuracy"
    current: float = field(init=False)
    previous: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.current = self.learning_rate

    def rate(self, epoch: int) -> float:
        return self.current

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise ValueError(
                f"schedule.monitor={self.monitor!r} is not among this run's metrics "
                f"{sorted(metrics)}; choose one of them (validation metrics need "
                "data.val_size > 0)"
            )
        value = metrics[self.monitor]
        if self.previous is not None and self._improvement(value) < self.threshold:
            self.current *= self.decay_factor
        self.previous = value

    def _improvement(self, value: float) -> float:
        change = value - self.previous
        return -change if self.monitor.endswith("loss") else change

    def state_dict(self) -> dict[str, float]:
        return {"current": self.current, "previous": self.previous}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.current = state["current"]
        self.previous = state["previous"]


Schedule = Constant | Step | Exponential | Cosine | Plateau


def make_schedule(name: str, learning_rate: float, **options) -> Schedule:
    """The schedule called ``name`` starting at ``learning_rate``."""
    classes = {
        "constant": Constant,
        "step": Step,
        "exponential": Exponential,
        "cosine": Cosine,
        "plateau": Plateau,
    }
    if name not in classes:
        raise ValueError(f"schedule.name must be one of {sorted(classes)}, got {name!r}")
    return classes[name](learning_rate=learning_rate, **options)
