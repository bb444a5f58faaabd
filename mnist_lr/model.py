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
    # Stored as (n_classes, n_features) rows: BLAS multiplies a batch by this layout and
    # writes its gradient faster than with (n_features, n_classes) rows (README
    # "Performance"). The shape seen by everyone stays (n_features, n_classes).
    return Params(np.asfortranarray(weights), np.zeros(n_classes, dtype=np.float32))


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
    work = Workspace.for_batches(len(labels), params, images.dtype)
    positions = label_positions(labels)
    loss = loss_and_grads_into(work, params, images, positions, weight_decay, with_loss=True)
    return loss, work.grad_weights, work.grad_bias


@dataclass
class Workspace:
    """Work arrays for ``loss_and_grads_into``, sized for batches of up to ``batch_size``.

    A training run allocates one and every step overwrites it, so a step allocates
    nothing. The scores are kept class-major, ``(n_classes, batch)``: the softmax then
    reduces over 10 rows of ``batch`` contiguous values, which NumPy vectorises, instead
    of over ``batch`` rows of 10 (measured: the softmax and both products of a batch of
    100 take 44 us instead of 54). The gradients have the layout (C or Fortran order) of
    the parameters.
    """

    scores: np.ndarray  # (n_classes, batch_size)
    row_max: np.ndarray  # (1, batch_size): per sample, over classes
    row_sum: np.ndarray  # (1, batch_size)
    grad_weights: np.ndarray  # (n_features, n_classes)
    grad_bias: np.ndarray  # (n_classes,)

    @classmethod
    def for_batches(cls, batch_size: int, params: Params, images_dtype: np.dtype) -> Workspace:
        dtype = np.result_type(images_dtype, params.weights.dtype, params.bias.dtype)
        n_classes = params.bias.shape[0]
        return cls(
            scores=np.empty((n_classes, batch_size), dtype),
            row_max=np.empty((1, batch_size), dtype),
            row_sum=np.empty((1, batch_size), dtype),
            grad_weights=np.empty_like(params.weights, dtype=dtype),
            grad_bias=np.empty(n_classes, dtype),
        )


def label_positions(labels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Flat index of each sample's label in a ``Workspace``'s class-major scores.

    ``labels`` may hold several consecutive batches of ``batch_size`` (default: one batch
    of all); the positions restart at every batch, so a slice of them serves that batch
    (a shorter last batch included: the positions index the whole work array).
    """
    batch_size = len(labels) if batch_size is None else batch_size
    return labels * batch_size + np.arange(len(labels)) % batch_size


def loss_and_grads_into(
    work: Workspace,
    params: Params,
    images: np.ndarray,
    positions: np.ndarray,
    weight_decay: float = 0.0,
    *,
    with_loss: bool = False,
) -> float | None:
    """``loss_and_grads`` without allocating: the gradients land in ``work.grad_weights``
    and ``work.grad_bias``. ``positions`` are the batch's ``label_positions``.

    Returns the loss when ``with_loss`` is true, else None: the trainer needs one loss per
    epoch (to detect divergence), and the log and the mean cost a step several operations.
    """
    n_samples = len(images)
    scores = work.scores[:, :n_samples]
    row_max, row_sum = work.row_max[:, :n_samples], work.row_sum[:, :n_samples]
    all_scores = work.scores.reshape(-1)
    np.matmul(params.weights.T, images.T, out=scores)
    scores += params.bias[:, None]
    np.maximum.reduce(scores, axis=0, keepdims=True, out=row_max)
    scores -= row_max
    label_scores = all_scores[positions] if with_loss else None
    np.exp(scores, out=scores)
    np.add.reduce(scores, axis=0, keepdims=True, out=row_sum)
    loss = float(np.mean(np.log(row_sum[0]) - label_scores)) if with_loss else None

    scores /= row_sum
    all_scores[positions] -= 1.0
    scores /= n_samples
    if work.grad_weights.flags.c_contiguous:
        np.matmul(images.T, scores.T, out=work.grad_weights)
    else:
        np.matmul(scores, images, out=work.grad_weights.T)
    np.add.reduce(scores, axis=1, out=work.grad_bias)
    if weight_decay:
        if with_loss:
            loss += 0.5 * weight_decay * float(np.sum(params.weights * params.weights))
        work.grad_weights += weight_decay * params.weights
    return loss


# From this many rows on, ``images @ weights`` is faster with C-ordered weights (2x on the
# full training set); below, the (n_classes, n_features) rows of ``init_params`` win.
C_ORDER_FORWARD_ROWS = 1000


def _weights_for_rows(weights: np.ndarray, n_rows: int) -> np.ndarray:
    if n_rows >= C_ORDER_FORWARD_ROWS:
        return np.ascontiguousarray(weights)
    return weights


def predict(params: Params, images: np.ndarray) -> np.ndarray:
    """Predicted class per sample, ``(n_samples,)``."""
    return np.argmax(logits(params, images), axis=1)


def evaluate(
    params: Params, images: np.ndarray, labels: np.ndarray, chunk_size: int = 10_000
) -> tuple[float, float]:
    """Mean cross-entropy (nats, without weight decay) and accuracy, in vectorised chunks."""
    params = Params(_weights_for_rows(params.weights, min(chunk_size, len(labels))), params.bias)
    total_loss = 0.0
    correct = 0
    for start in range(0, len(labels), chunk_size):
        scores = logits(params, images[start : start + chunk_size])
        chunk_labels = labels[start : start + chunk_size]
        total_loss += float(cross_entropy(scores, chunk_labels).sum(dtype=np.float64))
        correct += int(np.count_nonzero(scores.argmax(axis=1) == chunk_labels))
    return total_loss / len(labels), correct / len(labels)
