"""A long sweep in one process must not accumulate figures, file handles or threads."""

from __future__ import annotations

import os
import threading

import numpy as np

from mnist_lr.model import init_params
from mnist_lr.optimizers import make_optimizer
from mnist_lr.plots import save_curves, save_model_pictures
from mnist_lr.schedules import make_schedule
from mnist_lr.trainer import fit


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _one_run(folder, seed):
    rng = np.random.default_rng(seed)
    images = rng.random((500, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 500)
    params = init_params()
    results = fit(
        images, labels, {"train": (images, labels), "test": (images[:100], labels[:100])},
        params=params, optimizer=make_optimizer("momentum", momentum=0.9),
        schedule=make_schedule("constant", 0.1), batch_size=32, epochs=2, seed=seed,
    )  # fmt: skip
    history = [{"epoch": r.epoch, **r.metrics} for r in results]
    save_curves(history, "leak check", folder)
    predictions = np.argmax(images[:100] @ params.weights, axis=1)
    save_model_pictures(params.weights, images[:100], labels[:100], predictions, "t", folder)


def test_many_runs_in_one_process_leak_no_figures_files_or_threads(tmp_path):
    import matplotlib.pyplot as plt

    _one_run(tmp_path, 0)  # first use loads fonts and starts nothing that should stay
    descriptors, threads = _open_descriptors(), threading.active_count()

    for seed in range(1, 6):
        _one_run(tmp_path, seed)

    assert plt.get_fignums() == []
    assert _open_descriptors() <= descriptors
    assert threading.active_count() <= threads
