"""Tests for mnist_lr.serving: the logged pyfunc model, in process, in a fresh process
without mnist_lr, and behind ``mlflow models serve``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mnist_lr import tracking
from mnist_lr.data import load_mnist
from mnist_lr.serving import OUTPUT_COLUMNS, DigitClassifier, as_images, model_options

N_SERVED = 50  # test images posted to the server


@dataclass(frozen=True)
class TrainedRun:
    """One short real training run in its own store."""

    run_id: str
    tracking_uri: str
    folder: Path
    images: np.ndarray  # the MNIST test images, (10000, 784) float32
    weights: np.ndarray  # the run's weights.npz: (784, 10)
    bias: np.ndarray  # (10,)

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/model"

    def download_model(self) -> str:
        """The model's folder, fetched through this run's own store."""
        return mlflow.artifacts.download_artifacts(
            artifact_uri=self.model_uri, tracking_uri=self.tracking_uri
        )

    def load_model(self):
        return mlflow.pyfunc.load_model(self.download_model())

    def expected_digits(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(images @ self.weights + self.bias, axis=1)


def train_one_epoch(mnist_dir: Path, folder: Path) -> tuple[str, str]:
    """Run ``python -m mnist_lr.run train.epochs=1`` in ``folder``; its run id and store."""
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lr.run",
            "train.epochs=1",
            f"data.dir={mnist_dir}",
            f"tracking.uri={tracking_uri}",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-lr")
    (run,) = client.search_runs([experiment.experiment_id])
    return run.info.run_id, tracking_uri


@pytest.fixture(scope="module")
def trained_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    folder = tmp_path_factory.mktemp("serving")
    run_id, tracking_uri = train_one_epoch(mnist_dir, folder)
    weights_file = MlflowClient(tracking_uri).download_artifacts(run_id, "weights.npz", folder)
    with np.load(weights_file) as arrays:
        weights, bias = arrays["weights"], arrays["bias"]
    images = load_mnist(mnist_dir, download=False).test_images
    return TrainedRun(run_id, tracking_uri, folder, images, weights, bias)


def start_server(
    command: list[str], folder: Path, env: dict[str, str], log_name: str
) -> subprocess.Popen:
    """``command`` in its own process group, its output in ``folder / log_name``."""
    with (folder / log_name).open("w") as log:
        return subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_server(server: subprocess.Popen, grace_seconds: float = 20) -> None:
    """End the server and every process it started (its workers and job runners share
    its process group and can outlive it by seconds): SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and group_alive(server.pid):
        server.poll()  # reap the leader, so the group can empty
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, body: dict, timeout: float = 30) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_ping(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the model server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the model server did not answer {url} within {timeout:.0f} s")


def test_digit_classifier_predicts_argmax_with_probabilities():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(784, 10)).astype(np.float32)
    bias = rng.normal(size=10).astype(np.float32)
    images = rng.uniform(size=(20, 784)).astype(np.float32)

    table = DigitClassifier(weights, bias).predict(None, images)

    assert list(table.columns) == OUTPUT_COLUMNS
    np.testing.assert_array_equal(table["digit"], np.argmax(images @ weights + bias, axis=1))
    probabilities = table[OUTPUT_COLUMNS[2:]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(table["probability"], probabilities.max(axis=1))


def test_digit_classifier_is_stable_for_large_scores():
    weights = np.full((784, 10), 50.0, dtype=np.float32)
    weights[:, 3] = 60.0

    table = DigitClassifier(weights, np.zeros(10, np.float32)).predict(None, np.ones((1, 784)))

    assert table["digit"].tolist() == [3]
    assert table["probability"].tolist() == [1.0]


@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 783), (0,)])
def test_as_images_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(n_images, 784\)"):
        as_images(np.zeros(shape))


def test_logging_a_model_takes_about_a_second(tmp_path: Path):
    """Logging must not slow short runs much (about 0.5 s here); the bound is loose."""
    client, experiment_id = tracking.open_experiment(
        f"sqlite:///{tmp_path / 'mlflow.db'}", "timing", tmp_path
    )
    np.savez(tmp_path / "w.npz", weights=np.zeros((784, 10)), bias=np.zeros(10))
    with tracking.start_run(client, experiment_id, "timing") as run:
        started = time.perf_counter()
        tracking.log_pyfunc_model(run, model_options(tmp_path / "w.npz", np.zeros((1, 784))))
        seconds = time.perf_counter() - started

    assert seconds < 10, f"logging the model took {seconds:.1f} s"
    artifacts = {item.path for item in client.list_artifacts(run.run_id, "model")}
    assert {"model/MLmodel", "model/serving.py", "model/artifacts"} <= artifacts


@pytest.mark.mnist
@pytest.mark.slow
def test_logged_model_predicts_the_runs_digits(trained_run: TrainedRun):
    images = trained_run.images[:500]

    table = trained_run.load_model().predict(images)

    assert list(table.columns) == OUTPUT_COLUMNS
    np.testing.assert_array_equal(table["digit"], trained_run.expected_digits(images))
    np.testing.assert_allclose(table[OUTPUT_COLUMNS[2:]].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.mnist
@pytest.mark.slow
def test_logged_model_takes_a_dataframe_of_784_columns(trained_run: TrainedRun):
    images = trained_run.images[:100]
    model = trained_run.load_model()

    from_frame = model.predict(pd.DataFrame(images))

    pd.testing.assert_frame_equal(from_frame, model.predict(images))


@pytest.mark.mnist
@pytest.mark.slow
def test_logged_model_has_signature_and_input_example(trained_run: TrainedRun):
    folder = trained_run.download_model()
    model = mlflow.pyfunc.load_model(folder)
    signature = model.metadata.signature

    assert signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 784)}}
    ]
    assert signature.outputs.input_names() == OUTPUT_COLUMNS
    example = model.metadata.load_input_example(folder)
    assert example.shape == (2, 784)
    np.testing.assert_allclose(example, trained_run.images[:2])


@pytest.mark.mnist
@pytest.mark.slow
def test_logged_model_loads_in_a_fresh_process_without_mnist_lr(trained_run: TrainedRun):
    """Only numpy, pandas and mlflow: the package itself cannot be imported there."""
    np.save(trained_run.folder / "images.npy", trained_run.images[:200])
    script = (
        "import sys\n"
        "sys.modules['mnist_lr'] = None  # any import of the package now fails\n"
        "import mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri({trained_run.tracking_uri!r})\n"
        f"model = mlflow.pyfunc.load_model({trained_run.model_uri!r})\n"
        "table = model.predict(np.load('images.npy'))\n"
        "print(' '.join(map(str, table['digit'])))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=trained_run.folder,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    digits = [int(word) for word in completed.stdout.split()]
    assert digits == trained_run.expected_digits(trained_run.images[:200]).tolist()


@pytest.mark.mnist
@pytest.mark.slow
def test_models_serve_answers_like_the_model_in_process(trained_run: TrainedRun):
    images = trained_run.images[:N_SERVED]
    expected = trained_run.load_model().predict(images)
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=trained_run.tracking_uri)
    # The server starts uvicorn by name: it must be on PATH, as in an activated venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve"),
        *("-m", trained_run.model_uri, "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    server = start_server(command, trained_run.folder, env, "models-serve.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_ping(f"{base}/ping", server)
        as_tensor = post_json(f"{base}/invocations", {"inputs": images.tolist()})
        as_frame = post_json(
            f"{base}/invocations",
            {"dataframe_split": {"columns": list(range(784)), "data": images.tolist()}},
        )
    finally:
        stop_server(server)

    for answer in (as_tensor, as_frame):
        served = pd.DataFrame(answer["predictions"])
        assert served["digit"].tolist() == expected["digit"].tolist()
        np.testing.assert_allclose(served["probability"], expected["probability"], rtol=1e-5)
