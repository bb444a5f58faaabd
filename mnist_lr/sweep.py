"""A Hydra multirun as one MLflow parent run with a child run per job.

``SweepCallback`` runs in the launching process: before any job starts it creates the
store, the experiment and the parent run (so parallel jobs never race to migrate a new
SQLite store or create the experiment), and leaves the parent's id in the sweep folder,
where every job finds it whatever the launcher. When the sweep ends it counts the jobs'
outcomes, logs the comparison to the parent and ends it.
"""

from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

logger = logging.getLogger(__name__)

HANDOFF_FILE = "mlflow_sweep.json"
OUTCOME_FILE = "job_outcome.json"


class SweepError(RuntimeError):
    """One or more jobs of a sweep failed; raised after the sweep is recorded."""


def sweep_name(config: DictConfig) -> str:
    """The named sweep (``+sweep=reference``), else a name from the sweep folder."""
    choice = config.hydra.runtime.choices.get("sweep")
    if choice:
        return choice
    return "multirun-" + Path(str(config.hydra.sweep.dir)).name


def read_handoff(sweep_dir: Path) -> dict[str, str] | None:
    """What the launching process left for the jobs: tracking URI, experiment and parent."""
    path = sweep_dir / HANDOFF_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_outcome(output_dir: Path, overrides: list[str], error: BaseException | None) -> None:
    """Each job leaves its outcome beside its output, for the launching process to count."""
    outcome = {"overrides": overrides, "status": "FINISHED" if error is None else "FAILED"}
    if error is not None:
        outcome["error"] = f"{type(error).__name__}: {error}"
    (output_dir / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2))


def read_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob(f"*/{OUTCOME_FILE}"))]


class SweepCallback(Callback):
    """Registered in ``conf/config.yaml`` under ``hydra.callbacks``."""

    def __init__(self) -> None:
        self._client = None
        self._parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_lr import tracking

        launch_dir = Path(config.hydra.runtime.cwd)
        sweep_dir = launch_dir / str(config.hydra.sweep.dir)
        tracking_uri = tracking.resolve_tracking_uri(config.tracking.uri, launch_dir)
        client, experiment_id = tracking.open_experiment(
            tracking_uri, config.tracking.experiment, launch_dir
        )
        name = sweep_name(config)
        overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
        tags = {"sweep": name, "sweep.overrides": overrides, "sweep.dir": str(sweep_dir)}
        parent_run_id = tracking.create_parent_run(client, experiment_id, name, tags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        handoff = {
            "tracking_uri": tracking_uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
        }
        (sweep_dir / HANDOFF_FILE).write_text(json.dumps(handoff, indent=2))
        self._client, self._parent_run_id = client, parent_run_id
        self._tracking_uri, self._experiment_id = tracking_uri, experiment_id
        atexit.register(self._end_if_abandoned)
        logger.info("sweep %r is MLflow parent run %s", name, parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_lr import tracking
        from mnist_lr.compare import compare_sweep

        launch_dir = Path(config.hydra.runtime.cwd)
        sweep_dir = launch_dir / str(config.hydra.sweep.dir)
        outcomes = read_outcomes(sweep_dir)
        failed = [outcome for outcome in outcomes if outcome["status"] != "FINISHED"]
        client, parent_run_id = self._client, self._parent_run_id
        parent = tracking.Run(client, parent_run_id)
        parent.log_metrics(
            {"sweep/jobs_finished": len(outcomes) - len(failed), "sweep/jobs_failed": len(failed)},
            step=0,
        )
        try:
            compare_sweep(client, parent_run_id, sweep_name(config))
        finally:
            status = "FAILED" if failed else "FINISHED"
            client.set_terminated(parent_run_id, status)
            atexit.unregister(self._end_if_abandoned)
        logger.info("browse the sweep: %s", tracking.browse_hint(self._tracking_uri))
        logger.info(
            "then open %s",
            tracking.experiment_url(self._tracking_uri, self._experiment_id, parent_run_id),
        )
        if failed:
            lines = [f"  {' '.join(o['overrides'])}: {o['error']}" for o in failed]
            raise SweepError(
                f"{len(failed)} of {len(outcomes)} jobs failed (parent run {parent_run_id}):\n"
                + "\n".join(lines)
            )

    def _end_if_abandoned(self) -> None:
        """The sweep was interrupted before it ended: mark the parent KILLED, not RUNNING."""
        if self._client is None:
            return
        run = self._client.get_run(self._parent_run_id)
        if run.info.status == "RUNNING":
            self._client.set_tag(self._parent_run_id, "error", "sweep interrupted")
            self._client.set_terminated(self._parent_run_id, "KILLED")
