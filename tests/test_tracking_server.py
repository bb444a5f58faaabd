"""A sweep tracked by a real ``mlflow server`` on 127.0.0.1: the launching process and every
job talk to it over HTTP, and artifacts go through the server (``--serve-artifacts``), so
nothing is written to a local store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_lr.tracking import PARENT_RUN_TAG

pytestmark = [pytest.mark.mnist, pytest.mark.slow]

SERVER_START_SECONDS = 90  # the first start on a busy machine takes 20 s or more
EXPERIMENT = "server-sweep"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_env() -> dict[str, str]:
    """The caller's environment without proxies (the server is on the loopback) and
    without a default store."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in _PROXY_VARIABLES and name != "MLFLOW_TRACKING_URI"
    }
    return env | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server gave no /health in {SERVER_START_SECONDS} s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """End the server and the workers it spawned (they share its process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
    # Workers may outlive the server's own process.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """The URL of an ``mlflow server`` with a SQLite backend and served artifacts; stopped
    when the module's tests are done, whatever they did."""
    folder = tmp_path_factory.mktemp("server")
    url = f"http://127.0.0.1:{free_port()}"
    log = folder / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder}/srv.db",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
    ]  # fmt: skip
    env = local_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(url, process, log)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in local_env().items():
                patch.setenv(name, value)
            for name in _PROXY_VARIABLES:
                patch.delenv(name, raising=False)
                patch.delenv(name.upper(), raising=False)
            yield url
    finally:
        stop(process)


def test_sweep_against_tracking_server_records_parent_children_and_comparison(
    tracking_server, tmp_path, mnist_dir
):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_lr.run",
            "-m",
            "seed=0,1",
            "train.epochs=1",
            "batch_size=bs1000",
            f"data.dir={mnist_dir}",
            f"tracking.uri={tracking_server}",
            f"tracking.experiment={EXPERIMENT}",
        ],  # fmt: skip
        cwd=tmp_path,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if PARENT_RUN_TAG not in run.data.tags]
    children = [run for run in runs if run.info.run_id != parent.info.run_id]
    assert len(children) == 2
    for child in children:
        assert child.data.tags[PARENT_RUN_TAG] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert {"test/accuracy", "best/test_accuracy", "train_seconds"} <= set(child.data.metrics)
        assert "metrics.csv" in {item.path for item in client.list_artifacts(child.info.run_id)}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/jobs_finished"] == 2

    compared = {
        Path(item.path).name for item in client.list_artifacts(parent.info.run_id, "compare")
    }
    assert {"table.md", "table.csv", "loss.png", "accuracy.png"} <= compared
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(
            client.download_artifacts(parent.info.run_id, "compare/table.csv", scratch)
        ).read_text()
    for child in children:
        assert child.info.run_name in table
    # Artifacts went through the server, and no local store was made in the launch folder.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlflow.db").exists()
