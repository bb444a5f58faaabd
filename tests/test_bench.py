"""Smoke test of mnist_lr.bench: every part runs and reports; timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnist_lr.bench import _slowest_imports, parse_args, reference_epoch
from mnist_lr.model import init_params, loss_and_grads

SECTIONS = {
    "machine",
    "settings",
    "floor",
    "training",
    "torch",
    "reference",
    "accuracy_race",
    "data_loading",
    "startup",
    "tracking",
    "memory",
    "targets",
}


@pytest.mark.mnist
@pytest.mark.slow
def test_bench_quick_reports_every_section(mnist_dir, tmp_path):
    report_path, table_path = tmp_path / "bench.json", tmp_path / "bench.md"
    env = dict(os.environ, MNIST_LR_DATA_DIR=str(mnist_dir))

    completed = subprocess.run(
        [sys.executable, "-m", "mnist_lr.bench", "--quick", "--json", str(report_path),
         "--markdown", str(table_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    report = json.loads(report_path.read_text())
    assert set(report) >= SECTIONS
    assert report["machine"]["cores"] >= 1
    assert {(row["optimizer"], row["batch_size"]) for row in report["training"]} == {
        (optimizer, size) for optimizer in ("sgd", "momentum") for size in (10, 100, 1000, "full")
    }
    assert "rows" in report["torch"] or "skipped" in report["torch"]
    assert [row["batch_size"] for row in report["reference"]["rows"]] == [10, 100]
    assert {"gz_seconds", "warm_seconds"} <= set(report["data_loading"])
    assert report["tracking"]["tracked_run_seconds"] > 0
    assert report["memory"]["peak_rss_mb"] > 0
    assert len(report["targets"]) == 8
    assert "| target | bound | measured | met |" in table_path.read_text()
    assert table_path.read_text() in completed.stdout


def test_reference_epoch_takes_the_mean_of_per_sample_gradients():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (20, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    params = init_params("normal", seed=1)
    expected = params.copy()
    for start in range(0, 20, 10):
        _, grad_weights, grad_bias = loss_and_grads(
            expected, images[start : start + 10], labels[start : start + 10]
        )
        expected.weights -= 0.1 * grad_weights
        expected.bias -= 0.1 * grad_bias

    reference_epoch(images, labels, params.weights, params.bias, 10, 0.1)

    np.testing.assert_allclose(params.weights, expected.weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(params.bias, expected.bias, rtol=1e-5, atol=1e-7)


def test_slowest_imports_lists_direct_imports_of_run_slowest_first():
    importtime = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 | mnist_lr",
            "import time:       500 |        500 |     yaml",
            "import time:       200 |        700 |   hydra",
            "import time:       300 |       2300 |   numpy",
            "import time:        50 |       3100 | mnist_lr.run",
        ]
    )

    assert _slowest_imports(importtime) == [
        {"module": "numpy", "seconds": 0.0023},
        {"module": "hydra", "seconds": 0.0007},
    ]


def test_parse_args_rejects_zero_repeats(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--repeats", "0"])

    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err
