"""Tests for mnist_lr.model: loss, gradients, stable softmax, evaluation and initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_lr.model import (
    N_CLASSES,
    N_FEATURES,
    Params,
    cross_entropy,
    evaluate,
    init_params,
    log_softmax,
    loss_and_grads,
    softmax,
)
from mnist_lr.optimizers import SGD
from mnist_lr.schedules import Constant
from mnist_lr.trainer import fit


def make_problem(
    n_samples: int = 6, n_features: int = 4, n_classes: int = 3, seed: int = 0
) -> tuple[Params, np.ndarray, np.ndarray]:
    """Random float64 parameters, images ``(n_samples, n_features)`` and labels."""
    rng = np.random.default_rng(seed)
    params = Params(rng.normal(0.0, 0.5, (n_features, n_classes)), rng.normal(0.0, 0.5, n_classes))
    images = rng.uniform(0.0, 1.0, (n_samples, n_features))
    labels = rng.integers(0, n_classes, n_samples)
    return params, images, labels


def make_blobs(
    n_samples: int = 300, n_features: int = 20, n_classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: float32 images and int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (n_classes, n_features))
    labels = rng.integers(0, n_classes, n_samples)
    images = centres[labels] + rng.normal(0.0, 2.0, (n_samples, n_features))
    return images.astype(np.float32), labels


def numerical_grads(
    params: Params, images: np.ndarray, labels: np.ndarray, weight_decay: float, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central finite differences of the loss for every weight and bias entry."""
    grads = []
    for array in params.arrays():
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved + eps
            loss_plus = loss_and_grads(params, images, labels, weight_decay)[0]
            array[index] = saved - eps
            loss_minus = loss_and_grads(params, images, labels, weight_decay)[0]
            array[index] = saved
            grad[index] = (loss_plus - loss_minus) / (2 * eps)
        grads.append(grad)
    return grads[0], grads[1]


def objective(params: Params, images: np.ndarray, labels: np.ndarray, weight_decay: float):
    """The regularised training loss, computed in float64 whatever the inputs' dtype."""
    params64 = Params(params.weights.astype(np.float64), params.bias.astype(np.float64))
    return loss_and_grads(params64, images.astype(np.float64), labels, weight_decay)[0]


# loss_and_grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.1, 2.5])
def test_loss_and_grads_match_central_differences(weight_decay):
    params, images, labels = make_problem()

    _, grad_weights, grad_bias = loss_and_grads(params, images, labels, weight_decay)
    expected_weights, expected_bias = numerical_grads(params, images, labels, weight_decay, 1e-6)

    np.testing.assert_allclose(grad_weights, expected_weights, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=1e-6, atol=1e-9)


def test_loss_and_grads_float32_inputs_match_float64_check():
    params, images, labels = make_problem(n_samples=20, n_features=8, n_classes=4, seed=3)
    params32 = Params(params.weights.astype(np.float32), params.bias.astype(np.float32))

    loss, grad_weights, grad_bias = loss_and_grads(
        params32, images.astype(np.float32), labels, weight_decay=0.1
    )
    expected_weights, expected_bias = numerical_grads(params, images, labels, 0.1, 1e-6)

    assert grad_weights.dtype == np.float32
    assert loss == pytest.approx(objective(params32, images, labels, 0.1), rel=1e-6)
    np.testing.assert_allclose(grad_weights, expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=1e-4, atol=1e-6)


def test_loss_and_grads_loss_is_mean_cross_entropy_plus_half_decay():
    params, images, labels = make_problem()
    scores = images @ params.weights + params.bias
    direct = np.mean(np.log(np.exp(scores).sum(axis=1)) - scores[np.arange(6), labels])

    loss, _, _ = loss_and_grads(params, images, labels, weight_decay=0.3)

    assert loss == pytest.approx(direct + 0.15 * np.sum(params.weights**2), rel=1e-12)


def test_loss_and_grads_zero_params_give_log_n_classes():
    params = init_params("zeros", n_features=4, n_classes=5)
    images = np.ones((3, 4), dtype=np.float32)

    loss, _, grad_bias = loss_and_grads(params, images, np.array([0, 0, 0]))

    assert loss == pytest.approx(np.log(5), rel=1e-6)
    # softmax is 1/5 everywhere; the label column is 1/5 - 1, averaged over 3 equal rows
    np.testing.assert_allclose(grad_bias, [-0.8, 0.2, 0.2, 0.2, 0.2], rtol=1e-6)


def test_loss_and_grads_stay_finite_for_huge_scores():
    params = Params(np.array([[1e4, -1e4, 0.0]]), np.zeros(3))
    images = np.array([[1.0], [1.0]])

    loss, grad_weights, grad_bias = loss_and_grads(params, images, np.array([0, 1]))

    assert loss == pytest.approx(1e4)  # mean of 0 and 2e4
    # both rows put all probability on class 0; only the second (label 1) is wrong
    np.testing.assert_allclose(grad_weights, [[0.5, -0.5, 0.0]], atol=1e-12)
    np.testing.assert_allclose(grad_bias, [0.5, -0.5, 0.0], atol=1e-12)


# log_softmax, cross_entropy, softmax


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label, expected", [(0, 0.0), (1, 2e4), (2, 1e4)])
def test_cross_entropy_is_exact_for_scores_of_1e4(dtype, label, expected):
    scores = np.array([[1e4, -1e4, 0.0]], dtype=dtype)

    loss = cross_entropy(scores, np.array([label]))

    assert np.isfinite(loss).all()
    assert loss[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_is_finite_for_scores_of_1e4(dtype):
    scores = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)

    log_probs = log_softmax(scores)

    np.testing.assert_allclose(log_probs[0], [0.0, -2e4, -1e4], atol=1e-6)
    np.testing.assert_allclose(log_probs[1], np.full(3, -np.log(3)), rtol=1e-6)


def test_cross_entropy_matches_direct_formula_for_moderate_scores():
    scores = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])

    loss = cross_entropy(scores, np.array([2, 1]))

    expected = [
        np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0)) - 3.0,
        np.log(np.exp(0.5) + np.exp(-0.5) + 1.0) + 0.5,
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_softmax_rows_sum_to_one(scale):
    scores = scale * np.random.default_rng(1).standard_normal((7, 10))

    probs = softmax(scores)

    assert np.isfinite(probs).all()
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(7), rtol=1e-12)


def test_softmax_known_values_and_input_untouched():
    scores = np.array([[0.0, np.log(3.0)], [1e4, -1e4]])
    original = scores.copy()

    probs = softmax(scores)

    np.testing.assert_allclose(probs, [[0.25, 0.75], [1.0, 0.0]], atol=1e-12)
    np.testing.assert_array_equal(scores, original)


# evaluate


def test_evaluate_equals_direct_computation():
    params, images, labels = make_problem(n_samples=50, n_features=5, n_classes=4, seed=2)
    scores = images @ params.weights + params.bias
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected_loss = -np.mean(np.log(probs[np.arange(50), labels]))
    expected_accuracy = np.mean(scores.argmax(axis=1) == labels)

    loss, accuracy = evaluate(params, images, labels)

    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert accuracy == expected_accuracy


def test_evaluate_ignores_weight_decay_and_counts_correct_predictions():
    params = Params(np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32))
    images = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])

    loss, accuracy = evaluate(params, images, labels)

    assert accuracy == 0.75
    right, wrong = np.log(1 + np.exp(-1.0)), np.log(1 + np.exp(1.0))
    assert loss == pytest.approx((3 * right + wrong) / 4, rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 49, 50, 10_000])
def test_evaluate_is_independent_of_chunk_size(chunk_size):
    params, images, labels = make_problem(n_samples=50, n_features=5, n_classes=4, seed=2)
    params32 = Params(params.weights.astype(np.float32), params.bias.astype(np.float32))
    images32 = images.astype(np.float32)
    reference_loss, reference_accuracy = evaluate(params32, images32, labels, chunk_size=50)

    loss, accuracy = evaluate(params32, images32, labels, chunk_size=chunk_size)

    assert loss == pytest.approx(reference_loss, rel=1e-6)
    assert accuracy == reference_accuracy


# init_params


def test_init_params_zeros_has_model_shapes():
    params = init_params("zeros")

    assert params.weights.shape == (N_FEATURES, N_CLASSES) == (784, 10)
    assert params.bias.shape == (10,)
    assert params.weights.dtype == params.bias.dtype == np.float32
    assert not params.weights.any()
    assert not params.bias.any()


def test_init_params_normal_is_seeded_and_reproducible():
    first = init_params("normal", seed=7, scale=0.01)
    second = init_params("normal", seed=7, scale=0.01)
    other_seed = init_params("normal", seed=8, scale=0.01)

    np.testing.assert_array_equal(first.weights, second.weights)
    assert not np.array_equal(first.weights, other_seed.weights)
    assert first.weights.dtype == np.float32
    assert first.weights.std() == pytest.approx(0.01, rel=0.05)
    assert abs(first.weights.mean()) < 0.001
    assert not first.bias.any()


def test_init_params_normal_scale_and_custom_shape():
    params = init_params("normal", seed=0, scale=2.0, n_features=20, n_classes=3)

    assert params.weights.shape == (20, 3)
    assert params.bias.shape == (3,)
    unit = init_params("normal", seed=0, scale=1.0, n_features=20, n_classes=3)
    np.testing.assert_allclose(params.weights, 2.0 * unit.weights, rtol=1e-6)


@pytest.mark.parametrize("init", ["uniform", "Zeros", ""])
def test_init_params_unknown_init_raises(init):
    with pytest.raises(ValueError, match=f"model.init must be 'zeros' or 'normal', got '{init}'"):
        init_params(init)


# the whole model, trained by the trainer, against scikit-learn


def test_fit_full_batch_reaches_sklearn_objective():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    images, labels = make_blobs(n_samples=300, n_features=20, n_classes=3)
    inverse_strength = 0.5
    # sklearn minimises C * sum(CE) + ||W||^2 / 2; dividing by C * n gives our objective.
    weight_decay = 1 / (inverse_strength * len(labels))
    reference = sklearn_linear.LogisticRegression(
        C=inverse_strength, solver="lbfgs", tol=1e-12, max_iter=10_000
    ).fit(images.astype(np.float64), labels)
    reference_params = Params(reference.coef_.T.copy(), reference.intercept_.copy())
    params = init_params("zeros", n_features=20, n_classes=3)

    fit(
        images,
        labels,
        {},
        params=params,
        optimizer=SGD(),
        schedule=Constant(1.0),
        batch_size=None,
        epochs=2000,
        seed=0,
        weight_decay=weight_decay,
    )

    ours = objective(params, images, labels, weight_decay)
    theirs = objective(reference_params, images, labels, weight_decay)
    assert ours == pytest.approx(theirs, rel=1e-4)
    np.testing.assert_allclose(params.weights, reference_params.weights, atol=1e-2)
