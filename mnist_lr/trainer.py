"""The training loop: mini-batch SGD over a seeded shuffle, evaluated every epoch.

Free of Hydra and MLflow: it takes arrays and plain values, reports each epoch through a
callback, and can start from a saved ``TrainState`` so an interrupted run resumes exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
ProgressCallback = Callable[[int, int, int], None]  # epoch, samples done, samples in all


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


# Rows handed from the gathering thread to the training thread at a time: the multiple of
# the batch size nearest below 4096 rows (12.5 MB of float32), so a chunk is still in the
# shared L3 cache when the steps read it, and the hand-offs are few.
GATHER_CHUNK_ROWS = 4096


class RowGatherer:
    """Gathers an epoch's shuffled rows chunk by chunk on a second thread, one chunk ahead
    of the steps that read them.

    A random gather of the training set costs about as much as the steps of a batch-100
    epoch (py-spy: a third of it); ``np.take`` releases the GIL, so the next chunk is
    gathered on the other core while this one trains. The chunks are whole batches, so
    the steps see exactly the batches of a gather done in place. ``mode="clip"``: the
    order is a permutation, every index is valid, and numpy's default ``"raise"`` would
    gather into a temporary first. One chunk (a full batch) is gathered in place.
    """

    def __init__(self, images: np.ndarray, batch_size: int):
        self.images = images
        self.chunk_rows = min(max(1, GATHER_CHUNK_ROWS // batch_size) * batch_size, len(images))
        several = self.chunk_rows < len(images)
        shape = (self.chunk_rows, images.shape[1])
        self.buffers = [np.empty(shape, images.dtype) for _ in range(2 if several else 1)]
        self.executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnist-lr-gather")
            if several
            else None
        )

    def chunks(self, order: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)``: ``rows`` are ``images[order[start : start + len(rows)]]``;
        an ``order`` of None means the rows as they are, without a copy."""
        if order is None:
            yield 0, self.images
            return
        starts = range(0, len(order), self.chunk_rows)
        if self.executor is None:
            for start in starts:
                yield start, self._gather(order, start, self.buffers[0])
            return
        pending = self.executor.submit(self._gather, order, 0, self.buffers[0])
        for index, start in enumerate(starts):
            rows = pending.result()
            if start + self.chunk_rows < len(order):
                buffer = self.buffers[(index + 1) % 2]
                pending = self.executor.submit(
                    self._gather, order, start + self.chunk_rows, buffer
                )
            yield start, rows

    def _gather(self, order: np.ndarray, start: int, buffer: np.ndarray) -> np.ndarray:
        indices = order[start : start + self.chunk_rows]
        rows = buffer[: len(indices)]
        np.take(self.images, indices, axis=0, out=rows, mode="clip")
        return rows

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    def __enter__(self) -> RowGatherer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def train_epoch(
    params: Params,
    labels: np.ndarray,
    order: np.ndarray | None,
    batch_size: int,
    optimizer: Optimizer,
    optimizer_state: State,
    learning_rate: float,
    weight_decay: float,
    epoch: int,
    gatherer: RowGatherer,
    work: Workspace,
    on_progress: ProgressCallback | None = None,
) -> float:
    """One pass over the data in the order given (None: as they are); returns the last
    batch's loss. ``on_progress(epoch, samples_done, n_samples)`` follows each chunk."""
    shuffled_labels = labels if order is None else labels.take(order)
    positions = label_positions(shuffled_labels, batch_size)
    grads = (work.grad_weights, work.grad_bias)
    n_samples = len(labels)
    loss = 0.0
    for chunk_start, rows in gatherer.chunks(order):
        for start, stop in iterate_batches(len(rows), batch_size):
            first = chunk_start + start
            loss = loss_and_grads_into(
                work,
                params,
                rows[start:stop],
                positions[first : chunk_start + stop],
                weight_decay,
                with_loss=chunk_start + stop == n_samples,
            )
            optimizer.update(params, grads, optimizer_state, learning_rate)
        if on_progress is not None:
            on_progress(epoch, chunk_start + len(rows), n_samples)
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
    on_progress: ProgressCallback | None = None,
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
    work = Workspace.for_batches(batch_size, state.params, images.dtype)
    threads = training_threads(batch_size)

    results = []
    with RowGatherer(images, batch_size) as gatherer:
        for epoch in range(state.epoch + 1, epochs + 1):
            learning_rate = schedule.rate(epoch)
            started = time.perf_counter()
            order = rng.permutation(n_samples)
            if batch_size == n_samples:
                # One step over every sample: the order changes only the rounding of the
                # gradient's sum, and a shuffled copy of the set costs ~40% of the step.
                # The permutation is still drawn, so the random stream is the same.
                order = None
            # A diverging run overflows before the epoch's check reports it: no warnings.
            with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):
                train_epoch(
                    state.params, labels, order, batch_size, optimizer,
                    state.optimizer_state, learning_rate, weight_decay, epoch, gatherer, work,
                    on_progress,
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
