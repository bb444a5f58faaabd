"""Multinomial logistic regression: logits = X W + b, softmax cross-entropy.

Shapes: X is ``(n_samples, n_features)`` float32, W is ``(n_features, n_classes)``,
b is ``(n_classes,)``, labels are ``(n_samples,)`` integers in ``[0, n_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FEATURES = 784
N_CLASSES = 10


@dataclass
class Params:
    """The model's parameters, updated in place by the optimizers."""

    weights: np.ndarray  # (n_features, n_classes)
    bias: np.ndarray  # (n_classes,)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.weights, self.bias

    def copy(self) -> Params:
        return Params(self.weights.copy(), self.bias.copy())


def init_params(
    init: str = "zeros",
    seed: int = 0,
    scale: float = 0.01,
    n_features: int = N_FEATURES,
    n_classes: int = N_CLASSES,
) -> Params:
    """Zeros, or a seeded normal with standard deviation ``scale`` (bias stays zero)."""
    if init == "zeros":
        weights = np.zeros((n_features, n_classes), dtype=np.float32)
    elif init == "normal":
        rng = np.random.default_rng(seed)
        weights = (scale * rng.standard_normal((n_features, n_classes))).astype(np.float32)
    else:
        raise ValueError(f"model.init must be 'zeros' or 'normal', got {init!r}")
    return Params(weights, np.zeros(n_classes, dtype=np.float32))


def logits(params: Params, images: np.ndarray) -> np.ndarray:
    """``(n_samples, n_classes)`` scores before the softmax."""
    return images @ params.weights + params.bias


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, stable for any finite scores (log-sum-exp)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise probabilities; the max is subtracted first so exp never overflows."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def cross_entropy(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy in nats, ``(n_samples,)``."""
    log_probs = log_softmax(scores)
    return -log_probs[np.arange(len(labels)), labels]


def loss_and_grads(
    params: Params,
    images: np.ndarray,
    labels: np.ndarray,
    weight_decay: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy (plus ``weight_decay / 2 * ||W||^2``) and its gradients.

    The gradient of the mean loss with respect to the scores is
    ``(softmax - one_hot) / n``; the one-hot matrix is never built, 1 is subtracted at
    the label positions instead.
    """
    n_samples = len(labels)
    scores = logits(params, images)
    rows = np.arange(n_samples)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp_scores = np.exp(shifted)
    sum_exp = exp_scores.sum(axis=1)
    loss = float(np.mean(np.log(sum_exp) - shifted[rows, labels]))

    delta = exp_scores
    delta /= sum_exp[:, None]
    delta[rows, labels] -= 1.0
    delta /= n_samples
    grad_weights = images.T @ delta
    grad_bias = delta.sum(axis=0)
    if weight_decay:
        loss += 0.5 * weight_decay * float(np.sum(params.weights * params.weights))
        grad_weights += weight_decay * params.weights
    return loss, grad_weights, grad_bias


def predict(params: Params, images: np.ndarray) -> np.ndarray:
    """Predicted class per sample, ``(n_samples,)``."""
    return np.argmax(logits(params, images), axis=1)


def evaluate(
    params: Params, images: np.ndarray, labels: np.ndarray, chunk_size: int = 10_000
) -> tuple[float, float]:
    """Mean cross-entropy (nats, without weight decay) and accuracy, in vectorised chunks."""
    total_loss = 0.0
    correct = 0
    for start in range(0, len(labels), chunk_size):
        scores = logits(params, images[start : start + chunk_size])
        chunk_labels = labels[start : start + chunk_size]
        total_loss += float(cross_entropy(scores, chunk_labels).sum(dtype=np.float64))
        correct += int(np.count_nonzero(scores.argmax(axis=1) == chunk_labels))
    return total_loss / len(labels), correct / len(labels)
