"""The run-scoping contract: 3 run modes x 2 rank scopes x 5 topologies, plus parent/child in one process."""

from __future__ import annotations

import pickle

import pytest

from wandbflow.errors import ConfigError, ScopeError
from wandbflow.policy import ParentRun, RunPlan, plan
from wandbflow.topology import DistributedInfo, get_distributed_info

BASE = "s1-train-1"


def topo(rank: int, local_rank: int, worker: int, nodes: int) -> DistributedInfo:
    return DistributedInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=2 * nodes,
        local_world_size=2,
        worker_index=worker,
        num_workers=nodes,
    )


TOPOLOGIES = {
    "not-distributed": None,
    "single-node-rank0": topo(0, 0, 0, 1),
    "single-node-rank1": topo(1, 1, 0, 1),
    "multi-node-local0": topo(2, 0, 1, 2),
    "multi-node-local1": topo(3, 1, 1, 2),
}


def P(initialize, id, group=None, label=None, primary=True, finishes=True):
    return RunPlan(
        initialize=initialize, reuse_parent=False, id=id, group=group, label=label, primary=primary, finishes=finishes
    )


SKIP = RunPlan(initialize=False, reuse_parent=False, id=None, group=None, label=None, primary=False, finishes=False)
SHARED_ERROR = "error"

# (run_mode, rank_scope, topology) -> expected plan, straight from DESIGN.md's tables.
EXPECTED = {
    ("auto", "global", "not-distributed"): P(True, BASE),
    ("auto", "global", "single-node-rank0"): P(True, BASE),
    ("auto", "global", "single-node-rank1"): SKIP,
    ("auto", "global", "multi-node-local0"): SKIP,
    ("auto", "global", "multi-node-local1"): SKIP,
    ("auto", "worker", "not-distributed"): P(True, BASE),
    ("auto", "worker", "single-node-rank0"): P(True, BASE),
    ("auto", "worker", "single-node-rank1"): SKIP,
    ("auto", "worker", "multi-node-local0"): P(True, f"{BASE}-worker-1"),
    ("auto", "worker", "multi-node-local1"): SKIP,
    ("shared", "global", "not-distributed"): SHARED_ERROR,
    ("shared", "global", "single-node-rank0"): P(True, BASE, label="rank-0"),
    ("shared", "global", "single-node-rank1"): P(True, BASE, label="rank-1", primary=False, finishes=False),
    ("shared", "global", "multi-node-local0"): P(True, BASE, label="worker-1-rank-0", primary=False, finishes=False),
    ("shared", "global", "multi-node-local1"): P(True, BASE, label="worker-1-rank-1", primary=False, finishes=False),
    ("shared", "worker", "not-distributed"): SHARED_ERROR,
    ("shared", "worker", "single-node-rank0"): P(True, BASE, label="rank-0"),
    ("shared", "worker", "single-node-rank1"): P(True, BASE, label="rank-1", primary=False, finishes=False),
    ("shared", "worker", "multi-node-local0"): P(True, f"{BASE}-worker-1", label="worker-1-rank-0"),
    ("shared", "worker", "multi-node-local1"): P(
        True, f"{BASE}-worker-1", label="worker-1-rank-1", primary=False, finishes=False
    ),
    ("new", "global", "not-distributed"): P(True, BASE),
    ("new", "global", "single-node-rank0"): P(True, f"{BASE}-rank-0", group=BASE),
    ("new", "global", "single-node-rank1"): P(True, f"{BASE}-rank-1", group=BASE),
    ("new", "global", "multi-node-local0"): P(True, f"{BASE}-rank-2", group=BASE),
    ("new", "global", "multi-node-local1"): P(True, f"{BASE}-rank-3", group=BASE),
    ("new", "worker", "not-distributed"): P(True, BASE),
    ("new", "worker", "single-node-rank0"): P(True, f"{BASE}-worker-0-rank-0", group=f"{BASE}-worker-0"),
    ("new", "worker", "single-node-rank1"): P(True, f"{BASE}-worker-0-rank-1", group=f"{BASE}-worker-0"),
    ("new", "worker", "multi-node-local0"): P(True, f"{BASE}-worker-1-rank-0", group=f"{BASE}-worker-1"),
    ("new", "worker", "multi-node-local1"): P(True, f"{BASE}-worker-1-rank-1", group=f"{BASE}-worker-1"),
}


def test_the_table_has_all_30_cases():
    assert len(EXPECTED) == 30


@pytest.mark.parametrize(("run_mode", "rank_scope", "topology"), sorted(EXPECTED))
def test_plan(run_mode, rank_scope, topology):
    expected = EXPECTED[(run_mode, rank_scope, topology)]
    if expected == SHARED_ERROR:
        with pytest.raises(ScopeError, match="no parent run"):
            plan(run_mode, rank_scope, topology=TOPOLOGIES[topology], parent=None, base=BASE)
        return
    got = plan(run_mode, rank_scope, topology=TOPOLOGIES[topology], parent=None, base=BASE)
    assert got == expected
    assert got.shared == (run_mode == "shared")


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("rank_scope", ["global", "worker"])
def test_one_run_per_scope_in_auto_and_shared(topology, rank_scope):
    """Across all ranks of a job, auto and shared open exactly one run per (global|worker) scope."""
    info = TOPOLOGIES[topology]
    if info is None:
        return
    nodes = info["num_workers"]
    ranks = [topo(w * 2 + lr, lr, w, nodes) for w in range(nodes) for lr in range(2)]
    expected_runs = 1 if rank_scope == "global" else nodes
    auto = {p.id for t in ranks if (p := plan("auto", rank_scope, topology=t, parent=None, base=BASE)).initialize}
    shared = [plan("shared", rank_scope, topology=t, parent=None, base=BASE) for t in ranks]
    assert len(auto) == expected_runs
    assert len({p.id for p in shared}) == expected_runs
    assert sum(p.primary for p in shared) == expected_runs
    assert len({p.label for p in shared}) == len(ranks)


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_parent_in_the_same_process_decides(topology):
    parent = ParentRun("s1-pipeline-1", group="etl")
    info = TOPOLOGIES[topology]
    for mode in ("auto", "shared"):
        got = plan(mode, "global", topology=info, parent=parent, base=BASE)
        assert got.reuse_parent and not got.initialize and got.id == parent.id
    new = plan("new", "global", topology=info, parent=parent, base=BASE)
    assert new.initialize and new.id == BASE and new.group == "etl"
    ungrouped = plan("new", "global", topology=info, parent=ParentRun("p-1"), base=BASE)
    assert ungrouped.group == "p-1"


@pytest.mark.parametrize(
    ("key", "kwargs"), [("run_mode", {"run_mode": "sometimes"}), ("rank_scope", {"rank_scope": "node"})]
)
def test_unknown_mode_or_scope_is_named(key, kwargs):
    args = {"run_mode": "auto", "rank_scope": "global", **kwargs}
    with pytest.raises(ConfigError) as info:
        plan(args["run_mode"], args["rank_scope"], topology=None, parent=None, base=BASE)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: must be one of")
    assert pickle.loads(pickle.dumps(info.value)).key == key


def test_distributed_info_from_torchrun_environment():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    assert get_distributed_info(env) == topo(3, 1, 1, 2)
    assert get_distributed_info({}) is None
    assert get_distributed_info({"RANK": "0", "WORLD_SIZE": "1"}) is None
    single = get_distributed_info({"RANK": "1", "WORLD_SIZE": "2"})
    assert single == DistributedInfo(
        rank=1, local_rank=1, world_size=2, local_world_size=2, worker_index=0, num_workers=1
    )


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK"),
        ({"RANK": "0", "WORLD_SIZE": "-1"}, "WORLD_SIZE"),
    ],
)
def test_bad_distributed_environment_is_named(env, key):
    with pytest.raises(ConfigError) as info:
        get_distributed_info(env)
    assert info.value.key == key
