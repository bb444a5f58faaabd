"""Preview a sweep: ``python -m mnist_lr.preview [the arguments of mnist_lr.run]`` lists
the jobs the sweep would launch, numbered as Hydra numbers them, and their count.

Nothing runs: no job, no output folder, no MLflow store. The jobs are expanded by Hydra's
own machinery, as ``python -m mnist_lr.run`` would: the primary config is composed to read
``hydra.sweeper.params``, and the basic sweeper's cartesian product is taken of those
params and the command line. Each job's config is then composed and range-checked, so a
job that would fail before training is named here.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mnist_lr.config import ConfigError, register_configs, validate
from mnist_lr.sweep import BASIC_SWEEPER

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"


@dataclass
class SweepPlan:
    """What a command would launch. ``jobs`` is each job's overrides, in job order; it
    is None for a sweeper that picks its jobs while it runs (Optuna)."""

    mode: RunMode
    sweeper: str
    launcher: str
    jobs: list[list[str]] | None
    problems: dict[int, str] = field(default_factory=dict)  # job number -> how it would fail
    planned_jobs: int | None = None  # the trial budget of an adaptive sweeper


def plan_sweep(overrides: list[str], multirun: bool = False) -> SweepPlan:
    """Expand ``overrides`` (and ``-m``) into the jobs ``python -m mnist_lr.run`` would run."""
    register_configs()
    overrides = list(overrides)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="run"):
        hydra = GlobalHydra.instance().hydra
        mode = _run_mode(hydra, overrides, multirun)
        if mode == RunMode.RUN:
            cfg = hydra.compose_config(CONFIG_NAME, overrides, run_mode=RunMode.RUN)
            jobs = [list(cfg.hydra.overrides.task)]
            return _checked(SweepPlan(mode, "-", "-", jobs), hydra.config_loader, cfg)
        cfg = hydra.compose_config(CONFIG_NAME, overrides, run_mode=RunMode.MULTIRUN)
        choices = cfg.hydra.runtime.choices
        plan = SweepPlan(mode, choices["hydra/sweeper"], choices["hydra/launcher"], None)
        if cfg.hydra.sweeper._target_ != BASIC_SWEEPER:
            plan.planned_jobs = cfg.hydra.sweeper.get("n_trials")
            return plan
        plan.jobs = _expand(cfg, hydra.config_loader)
        return _checked(plan, hydra.config_loader, cfg)


def _run_mode(hydra, overrides: list[str], multirun: bool) -> RunMode:
    """RUN or MULTIRUN, decided as Hydra's command line decides it: ``-m``, else the
    composed ``hydra.mode``. Appends the ``hydra.mode`` override Hydra would add."""
    mode = hydra.get_mode(config_name=CONFIG_NAME, overrides=overrides)
    if mode is None or (multirun and mode == RunMode.RUN):
        mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        overrides.append(f"hydra.mode={mode.name}")
    return mode


def _expand(cfg: DictConfig, config_loader) -> list[list[str]]:
    """The basic sweeper's jobs: its ``params`` first, then the command line's task
    overrides (a key given in both takes the command line's values), as a product."""
    sweeper = cfg.hydra.sweeper
    arguments = [f"{key}={value}" for key, value in (sweeper.params or {}).items()]
    arguments += list(cfg.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, sweeper.max_batch_size)
    return [job for batch in batches for job in batch]


def _checked(plan: SweepPlan, config_loader, cfg: DictConfig) -> SweepPlan:
    """Compose each job's config as its launcher would and apply the range checks."""
    for number, job in enumerate(plan.jobs):
        try:
            validate(config_loader.load_sweep_config(cfg, list(job)))
        except ConfigError as error:
            detail = str(error).replace("\n", "\n      ")
            plan.problems[number] = f"would fail before training: {detail}"
        except (HydraException, OmegaConfBaseException) as error:
            # Hydra composes every job of a batch before launching any.
            first_line = str(error).strip().splitlines()[0]
            plan.problems[number] = (
                f"cannot be composed, so the sweep would not start: {first_line}"
            )
    return plan


def describe(plan: SweepPlan) -> str:
    """The plan as the console shows it."""
    if plan.mode == RunMode.RUN:
        lines = ["a single run, not a sweep (add -m to sweep comma-separated values):"]
    elif plan.jobs is None:
        budget = f"up to {plan.planned_jobs} jobs" if plan.planned_jobs else "its jobs"
        return (
            f"hydra/sweeper={plan.sweeper} chooses {budget} while the sweep runs "
            f"(hydra/launcher={plan.launcher}); they cannot be listed in advance\n"
        )
    else:
        lines = [f"sweep of {len(plan.jobs)} jobs (hydra/launcher={plan.launcher}):"]
    for number, job in enumerate(plan.jobs):
        lines.append(f"  #{number}  {' '.join(job) or '(defaults)'}")
        if number in plan.problems:
            lines.append(f"      {plan.problems[number]}")
    count = len(plan.jobs)
    lines.append(f"{count} job{'s' if count != 1 else ''}; nothing was run")
    if plan.problems:
        lines.append(f"{len(plan.problems)} of them would fail")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lr.preview",
        description="List the jobs a sweep would run, and their count, without running them. "
        "Takes the arguments of python -m mnist_lr.run.",
    )
    parser.add_argument("-m", "--multirun", action="store_true", help="sweep, as with run")
    parser.add_argument("overrides", nargs="*", help="e.g. +sweep=reference, optimizer.lr=0.1,0.3")
    args = parser.parse_args(argv)
    try:
        plan = plan_sweep(args.overrides, args.multirun)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        if "hydra/sweeper/optuna" in str(error):
            print(
                "the Optuna sweeper is an optional extra: pip install -e '.[optuna]'",
                file=sys.stderr,
            )
        return 2
    print(describe(plan), end="")
    return 1 if plan.problems else 0


if __name__ == "__main__":
    sys.exit(main())
