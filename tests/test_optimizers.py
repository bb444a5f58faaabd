"""Tests for mnist_lr.optimizers: two steps of each optimizer against values worked out by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mnist_lr.model import Params
from mnist_lr.optimizers import SGD, Adam, Momentum, Nesterov, make_optimizer

LEARNING_RATE = 0.1


def zero_params() -> Params:
    """Weights ``(1, 2)`` and bias ``(2,)`` starting at zero, in float64."""
    return Params(np.zeros((1, 2)), np.zeros(2))


def take_steps(optimizer, grads_per_step) -> tuple[list[Params], dict]:
    """Apply one update per entry of ``grads_per_step``; the params after each step."""
    params = zero_params()
    state = optimizer.init_state(params)
    history = []
    for grad_weights, grad_bias in grads_per_step:
        grads = (np.array([grad_weights], dtype=float), np.array(grad_bias, dtype=float))
        optimizer.update(params, grads, state, LEARNING_RATE)
        history.append(params.copy())
    return history, state


# The same gradient twice: weights (1, -2), bias (0.5, 0).
SAME_GRADS = [([1.0, -2.0], [0.5, 0.0])] * 2


def test_sgd_two_steps():
    (first, second), state = take_steps(SGD(), SAME_GRADS)

    # param -= 0.1 * grad, twice
    np.testing.assert_allclose(first.weights, [[-0.1, 0.2]], atol=1e-12)
    np.testing.assert_allclose(first.bias, [-0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(second.weights, [[-0.2, 0.4]], atol=1e-12)
    np.testing.assert_allclose(second.bias, [-0.1, 0.0], atol=1e-12)
    assert state == {}


def test_momentum_two_steps():
    (first, second), state = take_steps(Momentum(momentum=0.9), SAME_GRADS)

    # grad 1: v1 = 0.1, p1 = -0.1; v2 = 0.9 * 0.1 + 0.1 = 0.19, p2 = -0.1 - 0.19 = -0.29
    np.testing.assert_allclose(first.weights, [[-0.1, 0.2]], atol=1e-12)
    np.testing.assert_allclose(second.weights, [[-0.29, 0.58]], atol=1e-12)
    np.testing.assert_allclose(state["velocity.weights"], [[0.19, -0.38]], atol=1e-12)
    # grad 0.5: v1 = 0.05, p1 = -0.05; v2 = 0.045 + 0.05 = 0.095, p2 = -0.145
    np.testing.assert_allclose(first.bias, [-0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(second.bias, [-0.145, 0.0], atol=1e-12)
    np.testing.assert_allclose(state["velocity.bias"], [0.095, 0.0], atol=1e-12)


def test_nesterov_two_steps():
    (first, second), state = take_steps(Nesterov(momentum=0.9), SAME_GRADS)

    # grad 1: v1 = 0.1, p1 = -(0.9 * 0.1 + 0.1) = -0.19;
    #         v2 = 0.19, p2 = -0.19 - (0.9 * 0.19 + 0.1) = -0.19 - 0.271 = -0.461
    np.testing.assert_allclose(first.weights, [[-0.19, 0.38]], atol=1e-12)
    np.testing.assert_allclose(second.weights, [[-0.461, 0.922]], atol=1e-12)
    np.testing.assert_allclose(state["velocity.weights"], [[0.19, -0.38]], atol=1e-12)
    # grad 0.5: half of the above
    np.testing.assert_allclose(first.bias, [-0.095, 0.0], atol=1e-12)
    np.testing.assert_allclose(second.bias, [-0.2305, 0.0], atol=1e-12)


def test_adam_two_steps():
    # weights: first element sees 2 then -1, second sees 1 twice; bias sees 0 twice
    grads = [([2.0, 1.0], [0.0, 0.0]), ([-1.0, 1.0], [0.0, 0.0])]

    (first, second), state = take_steps(Adam(beta1=0.9, beta2=0.999, eps=1e-8), grads)

    # step 1: m = 0.1 g, v = 0.001 g^2, so m_hat / sqrt(v_hat) = sign(g): a full lr step
    np.testing.assert_allclose(first.weights, [[-0.1, -0.1]], atol=1e-7)
    # step 2, first element: m = 0.18 - 0.1 = 0.08, v = 0.003996 + 0.001 = 0.004996,
    # m_hat = 0.08 / 0.19 = 0.421053, v_hat = 0.004996 / 0.001999 = 2.499250,
    # step = 0.1 * 0.421053 / 1.580902 = 0.026634; m is still positive, so the param
    # keeps falling: p2 = -0.1 - 0.026634 = -0.126634
    # second element: constant gradient, another full step to -0.2
    np.testing.assert_allclose(second.weights, [[-0.1266337, -0.2]], atol=1e-7)
    np.testing.assert_allclose(state["m.weights"], [[0.08, 0.19]], atol=1e-12)
    np.testing.assert_allclose(state["v.weights"], [[0.004996, 0.001999]], atol=1e-12)
    # a zero gradient moves nothing (eps keeps 0 / 0 away)
    np.testing.assert_array_equal(second.bias, [0.0, 0.0])
    assert int(state["step"]) == 2


@pytest.mark.parametrize(
    "optimizer, first_step",
    [(SGD(), 0.01), (Momentum(), 0.01), (Nesterov(), 0.019), (Adam(), 0.01)],
)
def test_update_keeps_float32_params_float32(optimizer, first_step):
    params = Params(np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32))
    state = optimizer.init_state(params)
    grads = (np.ones((3, 2), dtype=np.float32), np.ones(2, dtype=np.float32))

    optimizer.update(params, grads, state, 0.01)

    assert params.weights.dtype == params.bias.dtype == np.float32
    np.testing.assert_allclose(params.weights, np.full((3, 2), -first_step), rtol=1e-5)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("sgd", {}, SGD()),
        ("momentum", {"momentum": 0.5}, Momentum(momentum=0.5)),
        ("nesterov", {"momentum": 0.8}, Nesterov(momentum=0.8)),
        ("adam", {"beta1": 0.8, "eps": 1e-6}, Adam(beta1=0.8, beta2=0.999, eps=1e-6)),
    ],
)
def test_make_optimizer_builds_named_optimizer(name, options, expected):
    assert make_optimizer(name, **options) == expected


@pytest.mark.parametrize("name", ["rmsprop", "SGD", ""])
def test_make_optimizer_rejects_unknown_name(name):
    names = "['adam', 'momentum', 'nesterov', 'sgd']"
    expected = f"optimizer.name must be one of {names}, got {name!r}"

    with pytest.raises(ValueError, match=re.escape(expected)):
        make_optimizer(name)
