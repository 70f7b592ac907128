"""The run-scoping contract: who opens which run, under what id and group.

Pure: ``plan`` maps (run_mode, rank_scope, topology, parent, base id) to a :class:`RunPlan`. Every other layer
asks it; nobody re-derives rank logic. The tables it implements are in DESIGN.md ("Run scoping semantics").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from wandbflow.errors import ConfigError, ScopeError
from wandbflow.topology import DistributedInfo

RunMode = Literal["auto", "new", "shared"]
RankScope = Literal["global", "worker"]
RUN_MODES: tuple[str, ...] = get_args(RunMode)
RANK_SCOPES: tuple[str, ...] = get_args(RankScope)


@dataclass(frozen=True)
class ParentRun:
    """What the policy needs to know of the enclosing run in this process."""

    id: str
    group: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """What one process does for one scope.

    Attributes:
        initialize: This process calls ``wandb.init`` for the scope.
        reuse_parent: The scope logs into the enclosing run of this process (no new run).
        id: The run id this process opens or joins (None when it neither opens nor reuses one).
        group: The run group to set (None: leave it to the settings).
        label: The label of this process inside a shared run (``rank-1``), None when not shared.
        primary: This process is the shared run's primary (or the sole owner of its run).
        finishes: This process finishes the run when the scope ends.
    """

    initialize: bool
    reuse_parent: bool
    id: str | None
    group: str | None
    label: str | None
    primary: bool
    finishes: bool

    @property
    def shared(self) -> bool:
        """Several processes write to this plan's run."""
        return self.label is not None


_SKIP = RunPlan(initialize=False, reuse_parent=False, id=None, group=None, label=None, primary=False, finishes=False)


def check_run_mode(value: object) -> RunMode:
    """Return ``value`` as a run mode, or raise :class:`ConfigError` naming ``run_mode``."""
    if value not in RUN_MODES:
        raise ConfigError(f"must be one of {', '.join(RUN_MODES)} (got {value!r})", key="run_mode")
    return value  # type: ignore[return-value]


def check_rank_scope(value: object) -> RankScope:
    """Return ``value`` as a rank scope, or raise :class:`ConfigError` naming ``rank_scope``."""
    if value not in RANK_SCOPES:
        raise ConfigError(f"must be one of {', '.join(RANK_SCOPES)} (got {value!r})", key="rank_scope")
    return value  # type: ignore[return-value]


def plan(
    run_mode: str,
    rank_scope: str,
    *,
    topology: DistributedInfo | None,
    parent: ParentRun | None,
    base: str,
    task: str = "task",
) -> RunPlan:
    """Decide what this process does for a scope.

    A parent run in this same process takes precedence (the one-process table): a step inside a rank's run is a
    child of that run. Without one, a distributed process follows the rank table; otherwise a new run is opened.

    Args:
        run_mode: ``auto``, ``new`` or ``shared``.
        rank_scope: ``global`` or ``worker``.
        topology: ``get_distributed_info()``; None when not distributed.
        parent: The enclosing run in this process, if any.
        base: The scope's base run id (``{session}-{task}-{n}`` or the user's id).
        task: The scope's name, for error messages.

    Returns:
        The plan for this process.

    Raises:
        ConfigError: Unknown run_mode or rank_scope.
        ScopeError: ``shared`` with neither a parent run nor a distributed job.
    """
    mode = check_run_mode(run_mode)
    scope = check_rank_scope(rank_scope)
    if parent is not None:
        return _plan_child(mode, parent, base)
    if topology is not None:
        return _plan_rank(mode, scope, topology, base)
    if mode == "shared":
        raise ScopeError(
            f"{task!r} has run_mode='shared' but there is no parent run to share: open it inside another "
            "scope, launch it on several ranks, or use run_mode='auto'",
            task=task,
        )
    return RunPlan(initialize=True, reuse_parent=False, id=base, group=None, label=None, primary=True, finishes=True)


def _plan_child(mode: RunMode, parent: ParentRun, base: str) -> RunPlan:
    if mode == "new":
        return RunPlan(
            initialize=True,
            reuse_parent=False,
            id=base,
            group=parent.group or parent.id,
            label=None,
            primary=True,
            finishes=True,
        )
    return RunPlan(
        initialize=False, reuse_parent=True, id=parent.id, group=None, label=None, primary=False, finishes=False
    )


def _plan_rank(mode: RunMode, scope: RankScope, topo: DistributedInfo, base: str) -> RunPlan:
    rank, local_rank, worker = topo["rank"], topo["local_rank"], topo["worker_index"]
    multi_node = topo["num_workers"] > 1
    worker_id = f"{base}-worker-{worker}" if multi_node else base
    if mode == "new":
        if scope == "global":
            run_id, group = f"{base}-rank-{rank}", base
        else:
            run_id, group = f"{base}-worker-{worker}-rank-{local_rank}", f"{base}-worker-{worker}"
        return RunPlan(
            initialize=True, reuse_parent=False, id=run_id, group=group, label=None, primary=True, finishes=True
        )
    run_id = base if scope == "global" else worker_id
    leader = rank == 0 if scope == "global" else local_rank == 0
    if mode == "auto":
        if not leader:
            return _SKIP
        return RunPlan(
            initialize=True, reuse_parent=False, id=run_id, group=None, label=None, primary=True, finishes=True
        )
    label = f"worker-{worker}-rank-{local_rank}" if multi_node else f"rank-{rank}"
    return RunPlan(
        initialize=True, reuse_parent=False, id=run_id, group=None, label=label, primary=leader, finishes=leader
    )
