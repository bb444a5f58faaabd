"""Optimizers: small objects that update the parameters in place.

Each optimizer creates its state from the parameters (``init_state``) and applies one step
(``update``). State is a flat ``dict[str, np.ndarray]`` so it can be checkpointed as-is.
The learning rate is passed per step because the schedule owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnist_lr.model import Params

State = dict[str, np.ndarray]
Grads = tuple[np.ndarray, np.ndarray]
_NAMES = ("weights", "bias")


def _zeros_like(params: Params, prefix: str) -> State:
    arrays = zip(_NAMES, params.arrays(), strict=True)
    return {f"{prefix}.{name}": np.zeros_like(array) for name, array in arrays}


@dataclass(frozen=True)
class SGD:
    """Plain SGD: ``param -= lr * grad``."""

    def init_state(self, params: Params) -> State:
        return {}

    def update(self, params: Params, grads: Grads, state: State, learning_rate: float) -> None:
        for param, grad in zip(params.arrays(), grads, strict=True):
            param -= learning_rate * grad


@dataclass(frozen=True)
class Momentum:
    """Heavy-ball momentum in the reference form: ``v = mu * v + lr * grad; param -= v``."""

    momentum: float = 0.9

    def init_state(self, params: Params) -> State:
        return _zeros_like(params, "velocity")

    def update(self, params: Params, grads: Grads, state: State, learning_rate: float) -> None:
        for name, param, grad in zip(_NAMES, params.arrays(), grads, strict=True):
            velocity = state[f"velocity.{name}"]
            velocity *= self.momentum
            velocity += learning_rate * grad
            param -= velocity


@dataclass(frozen=True)
class Nesterov:
    """Nesterov momentum in the same form: ``v = mu * v + lr * grad;
    param -= mu * v + lr * grad`` (the step looks ahead along the new velocity)."""

    momentum: float = 0.9

    def init_state(self, params: Params) -> State:
        return _zeros_like(params, "velocity")

    def update(self, params: Params, grads: Grads, state: State, learning_rate: float) -> None:
        for name, param, grad in zip(_NAMES, params.arrays(), grads, strict=True):
            velocity = state[f"velocity.{name}"]
            velocity *= self.momentum
            velocity += learning_rate * grad
            param -= self.momentum * velocity + learning_rate * grad


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction (Kingma and Ba, 2015)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init_state(self, params: Params) -> State:
        state = _zeros_like(params, "m") | _zeros_like(params, "v")
        state["step"] = np.zeros((), dtype=np.int64)
        return state

    def update(self, params: Params, grads: Grads, state: State, learning_rate: float) -> None:
        state["step"] += 1
        step = int(state["step"])
        step_size = learning_rate * np.sqrt(1 - self.beta2**step) / (1 - self.beta1**step)
        for name, param, grad in zip(_NAMES, params.arrays(), grads, strict=True):
            m, v = state[f"m.{name}"], state[f"v.{name}"]
            m *= self.beta1
            m += (1 - self.beta1) * grad
            v *= self.beta2
            v += (1 - self.beta2) * grad * grad
            param -= (step_size * m / (np.sqrt(v) + self.eps)).astype(param.dtype)


Optimizer = SGD | Momentum | Nesterov | Adam


def make_optimizer(name: str, **options: float) -> Optimizer:
    """The optimizer called ``name`` (``sgd``, ``momentum``, ``nesterov``, ``adam``)."""
    classes = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam}
    if name not in classes:
        raise ValueError(f"optimizer.name must be one of {sorted(classes)}, got {name!r}")
    return classes[name](**options)
