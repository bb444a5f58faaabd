"""BLAS threads, set deliberately for each kind of work.

A step on a mini-batch is microseconds of BLAS work: waking a second thread costs more
than it saves, so mini-batches run on one thread. Full-batch steps and evaluation multiply
tens of thousands of rows and use every core. The limits apply through
threadpoolctl when it is installed (it comes with scikit-learn); without it, BLAS keeps
its own default and training is only slower at small batches.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

# Largest batch trained on one BLAS thread. Measured on a 2-core machine (training pass
# per epoch, 1 vs 2 threads): batch 100 62 vs 73 ms, 1000 85 vs 100 ms, 5000 102 vs
# 185 ms, full set (55000) 91 vs 78 ms; batch 10 the same. The other core also gathers
# the next rows meanwhile (trainer.RowGatherer).
SINGLE_THREAD_MAX_BATCH = 10_000


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_threads(batch_size: int) -> int:
    """BLAS threads for training on batches of ``batch_size``."""
    return 1 if batch_size <= SINGLE_THREAD_MAX_BATCH else available_cores()


@contextlib.contextmanager
def blas_threads(count: int | None) -> Iterator[None]:
    """Limit BLAS to ``count`` threads inside the block (None: leave it as it is)."""
    controller = _controller() if count is not None else None
    if controller is None:
        yield
        return
    with controller.limit(limits=count, user_api="blas"):
        yield


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded libraries, found once: the scan takes ~0.5 ms,
    a limit through it 0.01 ms. None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def blas_description() -> list[dict[str, object]]:
    """Each BLAS library loaded in this process, its threading layer and thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads")
    return [
        {key: library.get(key) for key in keys}
        for library in threadpool_info()
        if library.get("user_api") == "blas"
    ]
