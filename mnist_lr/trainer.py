"""The training loop: mini-batch SGD over a seeded shuffle, evaluated every epoch.

Free of Hydra and MLflow: it takes arrays and plain values, reports each epoch through a
callback, and can start from a saved ``TrainState`` so an interrupted run resumes exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mnist_lr.model import Params, Workspace, evaluate, label_positions, loss_and_grads_into
from mnist_lr.optimizers import Optimizer, State
from mnist_lr.schedules import Schedule
from mnist_lr.threads import blas_threads, training_threads

logger = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The loss or the weights stopped being finite."""

    def __init__(self, epoch: int, learning_rate: float, detail: str):
        self.epoch = epoch
        self.learning_rate = learning_rate
        super().__init__(
            f"training diverged in epoch {epoch} at learning rate {learning_rate:g}: {detail}. "
            "Lower optimizer.lr (for example by 10x), pick a decaying schedule, "
            "or add train.weight_decay."
        )


@dataclass
class TrainState:
    """Everything needed to continue training after ``epoch`` epochs."""

    params: Params
    optimizer_state: State
    schedule_state: dict
    rng_state: dict
    epoch: int = 0


@dataclass
class EpochResult:
    """One epoch's metrics, keyed as they are logged (``train/loss``, ``test/accuracy``...)."""

    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


EvalSets = dict[str, tuple[np.ndarray, np.ndarray]]
EpochCallback = Callable[[EpochResult, TrainState], None]


def iterate_batches(n_samples: int, batch_size: int):
    """``(start, stop)`` of each batch; the last one is smaller when ``batch_size`` does not
    divide ``n_samples`` and is used as is (its gradient is the mean over its own samples),
    so every sample is seen exactly once per epoch."""
    for start in range(0, n_samples, batch_size):
        yield start, min(start + batch_size, n_samples)


def _check_finite(params: Params, loss: float, epoch: int, learning_rate: float) -> None:
    if not np.isfinite(loss):
        raise DivergenceError(epoch, learning_rate, f"the training loss became {loss}")
    for name, array in zip(("weights", "bias"), params.arrays(), strict=True):
        if not np.isfinite(array).all():
            raise DivergenceError(epoch, learning_rate, f"the {name} are no longer finite")


@dataclass
class StepBuffers:
    """What every step of a run reuses: the batch's rows are gathered into ``images``
    (so the matrix products read a small, cache-resident array), and ``work`` holds the
    scores and gradients."""

    images: np.ndarray  # (batch_size, n_features)
    row_offsets: np.ndarray  # (n_samples,): (i % batch_size) * n_classes
    work: Workspace

    @classmethod
    def for_run(cls, images: np.ndarray, batch_size: int, params: Params) -> StepBuffers:
        n_classes = params.bias.shape[0]
        return cls(
            images=np.empty((batch_size, images.shape[1]), images.dtype),
            row_offsets=label_positions(np.zeros(len(images), np.intp), n_classes, batch_size),
            work=Workspace.for_batches(batch_size, params, images.dtype),
        )


def train_epoch(
    params: Params,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    optimizer: Optimizer,
    optimizer_state: State,
    learning_rate: float,
    weight_decay: float,
    epoch: int,
    buffers: StepBuffers,
) -> float:
    """One pass over the data in the order given; returns the last batch's loss.

    Each batch's rows are gathered just before its step into ``buffers.images``: measured
    against gathering the whole shuffled set once per epoch, this is as fast or faster,
    because the products then read rows still in cache instead of a second pass over
    memory. ``mode="clip"`` because ``order`` is a permutation, so every index is valid,
    and numpy's default ``"raise"`` gathers into a temporary first.
    """
    positions = labels.take(order).astype(np.intp, copy=False)
    positions += buffers.row_offsets
    grads = (buffers.work.grad_weights, buffers.work.grad_bias)
    n_samples = len(order)
    loss = 0.0
    for start, stop in iterate_batches(n_samples, batch_size):
        batch = buffers.images[: stop - start]
        np.take(images, order[start:stop], axis=0, out=batch, mode="clip")
        loss = loss_and_grads_into(
            buffers.work,
            params,
            batch,
            positions[start:stop],
            weight_decay,
            with_loss=stop == n_samples,
        )
        optimizer.update(params, grads, optimizer_state, learning_rate)
    _check_finite(params, loss, epoch, learning_rate)
    return loss


def evaluate_sets(params: Params, eval_sets: EvalSets) -> dict[str, float]:
    """``{split}/loss`` and ``{split}/accuracy`` for every evaluation set."""
    metrics = {}
    for split, (images, labels) in eval_sets.items():
        loss, accuracy = evaluate(params, images, labels)
        metrics[f"{split}/loss"] = loss
        metrics[f"{split}/accuracy"] = accuracy
    return metrics


def fit(
    images: np.ndarray,
    labels: np.ndarray,
    eval_sets: EvalSets,
    *,
    params: Params,
    optimizer: Optimizer,
    schedule: Schedule,
    batch_size: int | None,
    epochs: int,
    seed: int,
    weight_decay: float = 0.0,
    state: TrainState | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[EpochResult]:
    """Train for ``epochs`` epochs (counting those already in ``state``).

    ``images`` is ``(n_samples, 784)`` float32, ``labels`` ``(n_samples,)`` int64;
    ``eval_sets`` maps a split name (``train``, ``val``, ``test``) to its arrays. A
    ``batch_size`` of ``None`` means the whole training set per step.
    """
    n_samples = len(labels)
    batch_size = n_samples if batch_size is None else batch_size
    if not 1 <= batch_size <= n_samples:
        raise ValueError(
            f"batch_size.size must be between 1 and the {n_samples} training samples, "
            f"got {batch_size}; use batch_size=full for one batch of everything"
        )
    if state is None:
        state = TrainState(
            params=params,
            optimizer_state=optimizer.init_state(params),
            schedule_state=schedule.state_dict(),
            rng_state=np.random.default_rng(seed).bit_generator.state,
        )
    schedule.load_state_dict(state.schedule_state)
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    buffers = StepBuffers.for_run(images, batch_size, state.params)
    threads = training_threads(batch_size)

    results = []
    for epoch in range(state.epoch + 1, epochs + 1):
        learning_rate = schedule.rate(epoch)
        started = time.perf_counter()
        order = rng.permutation(n_samples)
        with blas_threads(threads):
            train_epoch(
                state.params, images, labels, order, batch_size, optimizer,
                state.optimizer_state, learning_rate, weight_decay, epoch, buffers,
            )  # fmt: skip
        epoch_seconds = time.perf_counter() - started

        started = time.perf_counter()
        metrics = evaluate_sets(state.params, eval_sets)
        eval_seconds = time.perf_counter() - started
        schedule.observe(epoch, metrics)

        metrics |= {
            "learning_rate": learning_rate,
            "epoch_seconds": epoch_seconds,
            "eval_seconds": eval_seconds,
        }
        state.epoch = epoch
        state.schedule_state = schedule.state_dict()
        state.rng_state = rng.bit_generator.state
        result = EpochResult(epoch, metrics)
        results.append(result)
        logger.info(format_epoch(result, epochs))
        if on_epoch is not None:
            on_epoch(result, state)
    return results


def format_epoch(result: EpochResult, epochs: int) -> str:
    """The fixed-field line logged once per epoch."""
    fields = [f"epoch={result.epoch}/{epochs}"]
    for key, value in result.metrics.items():
        if key.endswith("seconds"):
            fields.append(f"{key}={value:.3f}")
        elif key == "learning_rate":
            fields.append(f"{key}={value:.6g}")
        else:
            fields.append(f"{key}={value:.4f}")
    return " ".join(fields)
