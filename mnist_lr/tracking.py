"""Everything MLflow: where the store is, the experiment, a run's lifecycle and its records.

The rest of the package hands plain values to this module; nothing else imports MLflow.
MLflow is imported where it is first needed (it takes seconds), so ``--help`` and config
errors answer without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"
# MLflow 3 opens an experiment in its GenAI view unless the experiment says it is classic
# model training; this tag and value are what its UI sets when a user picks that kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI also keeps a per-browser sidebar switch, and a link picks the
# model-training side with this query parameter (its code knows only "genai" and
# "machine_learning"; "model_training" falls back to the switch, GenAI by default).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
PARENT_RUN_TAG = "mlflow.parentRunId"
ERROR_TAG = "error"
# A hash of the resolved config, the code's commit and the data: equal keys, equal runs.
CONFIG_KEY_TAG = "config.key"
# A hash of a sweep's name and overrides: a rerun of the same command finds its parent.
SWEEP_KEY_TAG = "sweep.key"
TRACKED_PACKAGES = ("numpy", "hydra-core", "omegaconf", "mlflow", "matplotlib")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


def resolve_tracking_uri(configured: str | None, launch_dir: Path) -> str:
    """The store to use: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the launch folder. Relative SQLite and file paths are taken
    from the launch folder, not from wherever Hydra put the job."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri.removeprefix("sqlite:///")
        if path != ":memory:":
            return f"sqlite:///{(launch_dir / path).resolve()}"
    if "://" not in uri:
        return (launch_dir / uri).resolve().as_uri()
    return uri


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """MLflow resolves its default artifact folder (``./mlruns``) against the current
    directory when it creates an experiment; pin that to the launch folder."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Processes opening one SQLite store take turns: MLflow's schema migration of a new
    store is not safe to run twice at once."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + "-lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_experiment(tracking_uri: str, name: str, launch_dir: Path) -> tuple[MlflowClient, str]:
    """A client and the id of experiment ``name``, created (as a model-training
    experiment) if missing. Fails with TrackingError if the store is unusable."""
    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
    try:
        with _store_lock(tracking_uri), working_directory(launch_dir):
            client = connect(tracking_uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                experiment_id = _create_experiment(client, name)
            else:
                experiment_id = experiment.experiment_id
            # Also a write probe: a read-only store fails here, before any training.
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as error:
        raise TrackingError(
            f"cannot use the MLflow tracking store {tracking_uri!r}: {error}. "
            "Check tracking.uri (or $MLFLOW_TRACKING_URI): the folder must be writable, "
            "a server must be running and reachable."
        ) from error
    return client, experiment_id


def _check_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when no server answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"no MLflow tracking server answers at {tracking_uri} ({error}). Start it "
            "(mlflow server --host 127.0.0.1 --port 5000) or point tracking.uri "
            "(or $MLFLOW_TRACKING_URI) at a running one"
        ) from error


def connect(tracking_uri: str) -> MlflowClient:
    """A client of the store at ``tracking_uri`` (no request is made yet)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _create_experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:
        # Another process created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def experiment_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where ``mlflow ui`` (default host and port, or the tracking server) shows the run,
    on the classic training-runs page rather than the GenAI overview."""
    base = tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    base = base.rstrip("/")
    if run_id is not None:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"


def browse_hint(tracking_uri: str, launch_dir: Path | None = None) -> str:
    """The command that shows this store in a browser."""
    launch_dir = launch_dir or Path.cwd()
    if tracking_uri == f"sqlite:///{(launch_dir / DEFAULT_STORE).resolve()}":
        return "mlflow ui   (in this folder)"
    if tracking_uri.startswith("http"):
        return f"the tracking server at {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def flatten(config: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"optimizer": {"lr": 0.1}}`` becomes ``{"optimizer.lr": 0.1}``."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def reproducibility_tags(source_dir: Path, data_sha256: Mapping[str, str]) -> dict[str, str]:
    """Git commit and dirtiness of the code, library versions and the data checksums."""
    tags = {f"version.{package}": version(package) for package in TRACKED_PACKAGES}
    tags |= {f"data.sha256.{name}": digest for name, digest in data_sha256.items()}
    commit = git_commit(source_dir)
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(_git(source_dir, "status", "--porcelain")))
    return tags


def git_commit(source_dir: Path) -> str | None:
    """The code's commit, or None outside a repository."""
    return _git(source_dir, "rev-parse", "HEAD")


def git_diff(source_dir: Path) -> str | None:
    """The uncommitted changes to tracked files, or None outside a repository."""
    return _git(source_dir, "diff", "HEAD")


def _git(source_dir: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(source_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip()


class Run:
    """One MLflow run, written through a client with batched calls."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)) for key, value in params.items()]
        self.client.log_batch(self.run_id, params=entries)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        self.client.log_batch(self.run_id, tags=entries)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One write for all of an epoch's metrics."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


@contextlib.contextmanager
def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Run]:
    """Create a run and always end it (see ``ending``)."""
    from mlflow.tracking.context.registry import resolve_tags

    all_tags = resolve_tags(dict(tags or {}))
    if parent_run_id is not None:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    with ending(client, run.info.run_id, in_sweep=parent_run_id is not None) as tracked:
        yield tracked


@contextlib.contextmanager
def reopen_run(client: MlflowClient, run_id: str) -> Iterator[Run]:
    """Continue a KILLED or FAILED run in place: RUNNING again, then ended as usual."""
    client.update_run(run_id, status="RUNNING")
    tags = client.get_run(run_id).data.tags
    if ERROR_TAG in tags:
        client.delete_tag(run_id, ERROR_TAG)
    with ending(client, run_id, in_sweep=PARENT_RUN_TAG in tags) as tracked:
        yield tracked


@contextlib.contextmanager
def ending(client: MlflowClient, run_id: str, in_sweep: bool = False) -> Iterator[Run]:
    """End the run whatever happens: FINISHED on success, KILLED on Ctrl-C or SIGTERM,
    FAILED on any other exception with the error text as the ``error`` tag."""
    if in_sweep:
        resume_hint = "run the same sweep command again to resume the sweep"
    else:
        resume_hint = f"continue it with: python -m mnist_lr.run resume={run_id}"
    tracked = Run(client, run_id)
    try:
        yield tracked
    except (KeyboardInterrupt, SystemExit) as error:
        _end(client, run_id, "KILLED", f"interrupted: {type(error).__name__} {error}".strip())
        logger.warning("run %s KILLED; %s", run_id, resume_hint)
        raise
    except BaseException as error:
        _end(client, run_id, "FAILED", f"{type(error).__name__}: {error}")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


def run_status(client: MlflowClient, run_id: str) -> str | None:
    """RUNNING, FINISHED, FAILED or KILLED; None if there is no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        return None


def download_artifact(client: MlflowClient, run_id: str, path: str, folder: Path) -> Path | None:
    """The run's artifact ``path`` copied into ``folder``, or None if it has none."""
    from mlflow.exceptions import MlflowException

    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if path not in {entry.path for entry in client.list_artifacts(run_id, parent or None)}:
        return None
    try:
        return Path(client.download_artifacts(run_id, path, str(folder)))
    except (MlflowException, OSError):
        return None


def metric_rows(client: MlflowClient, run_id: str, keys: list[str], last_epoch: int) -> list[dict]:
    """The run's metrics as one row per epoch (1..last_epoch), as the trainer reports them."""
    rows = {epoch: {"epoch": epoch} for epoch in range(1, last_epoch + 1)}
    for key in keys:
        for metric in client.get_metric_history(run_id, key):
            if metric.step in rows:
                rows[metric.step][key] = metric.value
    return [rows[epoch] for epoch in sorted(rows)]


def find_child(client: MlflowClient, experiment_id: str, parent_run_id: str, config_key: str):
    """The newest child of ``parent_run_id`` tagged with ``config_key``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' "
        f"and tags.`{CONFIG_KEY_TAG}` = '{config_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def create_parent_run(
    client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, str]
) -> str:
    """A RUNNING run that a sweep's child runs point at; the caller ends it."""
    from mlflow.tracking.context.registry import resolve_tags

    run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(dict(tags)))
    return run.info.run_id


def find_unfinished_parent(client: MlflowClient, experiment_id: str, sweep_key: str):
    """The newest parent run of this sweep (``sweep.key`` tag) that did not FINISH."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_KEY_TAG}` = '{sweep_key}' "
        "and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def reopen_parent(client: MlflowClient, run_id: str) -> None:
    """A KILLED or FAILED sweep's parent, RUNNING again for the rerun."""
    client.update_run(run_id, status="RUNNING")
    if ERROR_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, ERROR_TAG)


def _end(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    try:
        client.set_tag(run_id, ERROR_TAG, reason[:5000])
    finally:
        client.set_terminated(run_id, status)


def log_pyfunc_model(run: Run, options: Mapping, artifact_path: str = "model") -> None:
    """Save a pyfunc model with ``options`` (``mlflow.pyfunc.save_model``'s arguments) and
    log its folder as the run's ``artifact_path``, so ``runs:/<run id>/model`` loads it.

    Saved locally and logged as artifacts rather than with ``mlflow.pyfunc.log_model``,
    which needs the fluent API's global tracking URI and active run."""
    import tempfile

    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / artifact_path
        mlflow.pyfunc.save_model(str(folder), **options)
        run.log_artifacts(folder, artifact_path)
