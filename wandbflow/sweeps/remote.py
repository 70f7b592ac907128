"""The W&B sweep engine: ``wandb.sweep`` creates, W&B's server controller samples, ``wandb.agent`` runs.

The controller hands trials only to W&B's own agents, so this engine serves functions (:meth:`WandbEngine.serve`),
and ``ask``/``tell`` raise :class:`~wandbflow.errors.SweepError`; hyperband runs on the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wandbflow.errors import SweepError
from wandbflow.sweeps.engines import TRIAL_JOB_TYPE, OnTrial, SweepEngine, SweepInfo, TrialAssignment, TrialRecord
from wandbflow.sweeps.spec import TOP_KEYS, SweepConfig
from wandbflow.sweeps.validate import validate

if TYPE_CHECKING:
    from wandbflow.sweeps.sweep import Sweep

# W&B's sweep states and ours.
_STATES = {"RUNNING": "running", "PENDING": "running", "PAUSED": "running", "FINISHED": "complete"}


class WandbEngine(SweepEngine):
    """Sweeps on the W&B server (online): created with ``wandb.sweep``, served by ``wandb.agent``."""

    name = "wandb"

    def create(self, config: SweepConfig, *, project: str | None, entity: str | None) -> SweepInfo:
        """Create the sweep on the server in ``entity/project`` (default: the resolved run settings')."""
        import wandb

        project, entity = _where(project, entity)
        sweep_id = wandb.sweep(config.to_dict(), entity=entity, project=project)
        return self._info(sweep_id, config, project, entity)

    def load(self, sweep_id: str) -> SweepInfo | None:
        """The sweep from the server (in the resolved project and entity), or None when the server has none."""
        import wandb

        project, entity = _where(None, None)
        try:
            found = wandb.Api().sweep(_path(entity, project, sweep_id))
        except (wandb.errors.CommError, ValueError):
            return None
        config = validate({k: v for k, v in dict(found.config).items() if k in TOP_KEYS})
        return self._info(sweep_id, config, project, entity)

    def ask(self, info: SweepInfo, *, worker: str) -> TrialAssignment | None:
        """Not possible: W&B's controller hands trials to its agents only."""
        raise SweepError(_AGENTS_ONLY.format(id=info.sweep_id), sweep_id=info.sweep_id)

    def tell(self, info: SweepInfo, number: int, state: str, value: float | None) -> str:
        """Not possible: W&B's agents report trials themselves."""
        raise SweepError(_AGENTS_ONLY.format(id=info.sweep_id), sweep_id=info.sweep_id)

    def records(self, info: SweepInfo) -> list[TrialRecord]:
        """The sweep's runs on the server, oldest first."""
        metric = info.config.metric
        runs = sorted(self._server_sweep(info).runs, key=lambda run: str(run.created_at))
        return [
            TrialRecord(
                number=number,
                run_id=run.id,
                state=str(run.state),
                value=run.summary.get(metric.name) if metric is not None else None,
                params=dict(run.config),
            )
            for number, run in enumerate(runs)
        ]

    def status(self, info: SweepInfo) -> str:
        """running, complete, or stopped (canceled, failed or crashed on the server)."""
        return _STATES.get(str(self._server_sweep(info).state).upper(), "stopped")

    def stop(self, info: SweepInfo, *, reason: str) -> None:
        """Not possible from here: W&B stops sweeps in its app and with ``wandb sweep --stop``."""
        path = f"{info.location}/{info.sweep_id}"
        raise SweepError(
            f"stop W&B sweep {path} in the W&B app or with `wandb sweep --stop {path}`", sweep_id=info.sweep_id
        )

    def serve(self, sweep: Sweep, function: Callable[[], Any], *, count: int | None, on_trial: OnTrial) -> int:
        """Run ``wandb.agent``; each trial it starts runs ``function`` in its own scoped run in the sweep's group."""
        import wandb

        from wandbflow.sweeps.trial import run_trial

        done = 0

        def trial() -> None:
            nonlocal done
            settings: dict[str, Any] = {
                "group": sweep.name,
                "tags": [sweep.id],
                "job_type": TRIAL_JOB_TYPE,
                "run_mode": "new",
                "project": sweep.info.project,
                "entity": sweep.info.entity,
            }
            if os.environ.get("WANDB_RUN_ID"):  # the run the controller assigned
                settings["id"] = os.environ["WANDB_RUN_ID"]
            number = done
            state, value = run_trial(sweep, number, settings, function, watched=False)
            done += 1
            on_trial(number, state, value)

        wandb.agent(sweep.id, function=trial, entity=sweep.info.entity, project=sweep.info.project, count=count)
        return done

    def _info(self, sweep_id: str, config: SweepConfig, project: str | None, entity: str | None) -> SweepInfo:
        return SweepInfo(
            sweep_id=sweep_id,
            name=config.name or f"sweep-{sweep_id}",
            config=config,
            engine=self.name,
            project=project,
            entity=entity,
            location=f"{entity or ''}/{project or ''}",
        )

    @staticmethod
    def _server_sweep(info: SweepInfo) -> Any:
        import wandb

        return wandb.Api().sweep(_path(info.entity, info.project, info.sweep_id))


_AGENTS_ONLY = (
    "W&B sweep {id} hands trials only to W&B agents: serve it with wandbflow.agent(...) or `wandbflow agent {id}`"
)


def _where(project: str | None, entity: str | None) -> tuple[str | None, str | None]:
    from wandbflow.config import resolve

    values = resolve().values
    return project or values.get("project"), entity or values.get("entity")


def _path(entity: str | None, project: str | None, sweep_id: str) -> str:
    return "/".join(part for part in (entity, project, sweep_id) if part)
