"""A Hydra multirun as one MLflow parent run with a child run per job.

``SweepCallback`` runs in the launching process: before any job starts it creates the
store, the experiment and the parent run (so parallel jobs never race to migrate a new
SQLite store or create the experiment), and leaves the parent's id in the sweep folder,
where every job finds it whatever the launcher. When the sweep ends it counts the jobs'
outcomes, logs the comparison to the parent and ends it.

Hydra turns an exception raised by a callback into a warning and carries on (exit status
0), so a callback that must stop the sweep or fail the command raises ``SystemExit``,
which is not an ``Exception`` and reaches the shell.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

HANDOFF_FILE = "mlflow_sweep.json"
OUTCOME_FILE = "job_outcome.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Each child run's job number in the sweep (hydra.job.num), to list the runs in job order.
JOB_TAG = "sweep.job"


class SweepError(RuntimeError):
    """A sweep cannot start, or some of its jobs failed; the message says which."""


def sweep_name(config: DictConfig) -> str:
    """The named sweep (``+sweep=reference``; ``reference+slurm`` for ``+sweep=[reference,
    slurm]``), else a name from the sweep folder."""
    choice = config.hydra.runtime.choices.get("sweep")
    if choice:
        return choice
    # Hydra records no choice when several options of a group are selected at once.
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if override.key_or_group == "sweep":
            value = override.value()
            return "+".join(value) if isinstance(value, list) else str(value)
    return "multirun-" + Path(str(config.hydra.sweep.dir)).name


def sweep_key(overrides: list[str]) -> str:
    """Equal for two launches of the same sweep command (``restart`` aside)."""
    kept = sorted(o for o in overrides if not o.lstrip("+~").startswith("restart="))
    text = json.dumps(kept)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_handoff(sweep_dir: Path) -> dict[str, str]:
    """What the launching process left for the jobs: tracking URI, experiment and parent."""
    path = sweep_dir / HANDOFF_FILE
    if not path.is_file():
        raise SweepError(
            f"this sweep job found no {HANDOFF_FILE} in {sweep_dir}: the launching process "
            "did not create the sweep's parent run. Keep hydra.callbacks.mlflow_sweep in the "
            "config, and put the sweep folder (hydra.sweep.dir) where every job can read it."
        )
    return json.loads(path.read_text())


def check_objective(config: DictConfig) -> None:
    """A sweeper that chooses jobs by their results (Optuna) maximises each job's best
    validation accuracy, which needs a validation split."""
    if config.hydra.sweeper._target_ != BASIC_SWEEPER and config.data.val_size == 0:
        raise SweepError(
            f"hydra/sweeper={config.hydra.runtime.choices.get('hydra/sweeper')} maximises the "
            "best validation accuracy, and data.val_size=0 leaves no validation split; "
            "keep data.val_size > 0 (for example data.val_size=5000)"
        )


def write_outcome(output_dir: Path, overrides: list[str], error: BaseException | None) -> None:
    """Each job leaves its outcome beside its output, for the launching process to count."""
    outcome = {"overrides": overrides, "status": "FINISHED" if error is None else "FAILED"}
    if error is not None:
        outcome["error"] = f"{type(error).__name__}: {error}"
    (output_dir / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2))


def read_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """The outcome of every job that started (it has a ``.hydra`` record), in job order. A
    job whose process died before it could write its outcome counts as failed."""
    job_dirs = {path.parent for path in sweep_dir.glob(f"*/{OUTCOME_FILE}")}
    job_dirs |= {path.parent.parent for path in sweep_dir.glob("*/.hydra/overrides.yaml")}
    outcomes = []
    for job_dir in sorted(job_dirs, key=_job_order):
        if (job_dir / OUTCOME_FILE).is_file():
            outcomes.append(json.loads((job_dir / OUTCOME_FILE).read_text()))
        else:
            record = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
            error = f"the job left no {OUTCOME_FILE} in {job_dir}: its process died"
            overrides = [str(item) for item in record]
            outcomes.append({"overrides": overrides, "status": "FAILED", "error": error})
    return outcomes


def _job_order(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (-1, job_dir.name)


class SweepCallback(Callback):
    """Registered in ``conf/config.yaml`` under ``hydra.callbacks``."""

    def __init__(self) -> None:
        self._client = None
        self._parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Without a parent run every job would open the store on its own: stop here.
        try:
            self._start(config)
        except Exception as error:
            _exit_with(SweepError(f"the sweep cannot start: {error}"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            failed = self._end(config)
        except Exception as error:
            _exit_with(SweepError(f"the sweep could not be recorded: {error}"))
        if failed:
            _exit_with(failed)

    def _start(self, config: DictConfig) -> None:
        from mnist_lr import tracking

        check_objective(config)
        launch_dir = Path(config.hydra.runtime.cwd)
        sweep_dir = launch_dir / str(config.hydra.sweep.dir)
        tracking_uri = tracking.resolve_tracking_uri(config.tracking.uri, launch_dir)
        client, experiment_id = tracking.open_experiment(
            tracking_uri, config.tracking.experiment, launch_dir
        )
        name = sweep_name(config)
        overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
        key = sweep_key(list(config.hydra.overrides.task))
        parent_run_id = None
        if not config.restart:
            parent_run_id = tracking.find_unfinished_parent(client, experiment_id, key)
        if parent_run_id is not None:
            tracking.reopen_parent(client, parent_run_id)
            logger.info(
                "rerunning sweep %r under its parent run %s: FINISHED jobs are skipped, "
                "unfinished ones resume (restart=true starts afresh)",
                name,
                parent_run_id,
            )
        else:
            tags = {"sweep": name, "sweep.overrides": overrides, "sweep.dir": str(sweep_dir)}
            tags[tracking.SWEEP_KEY_TAG] = key
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

    def _end(self, config: DictConfig) -> SweepError | None:
        """Record the outcomes and the comparison, end the parent; the failed jobs, if any."""
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
        if not failed:
            return None
        lines = [f"  {' '.join(o['overrides'])}: {o['error']}" for o in failed]
        return SweepError(
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


def _exit_with(error: SweepError) -> None:
    logger.error("%s", error)
    raise SystemExit(1) from error
