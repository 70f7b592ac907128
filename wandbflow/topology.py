"""Where this process sits in a distributed job, read from the torchrun environment.

Pure: reads environment variables only; imports neither torch nor wandb.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypedDict

from wandbflow.errors import ConfigError


class DistributedInfo(TypedDict):
    """This process's place in a distributed job, as torchrun (or ``wandbflow.launch``) describes it."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    worker_index: int
    num_workers: int


def get_distributed_info(environ: Mapping[str, str] | None = None) -> DistributedInfo | None:
    """Return this process's rank information, or None when it is not part of a multi-process job.

    Read from ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and ``GROUP_RANK`` (torchrun's names).
    A job of one process (``WORLD_SIZE`` unset or 1) is not distributed.

    Args:
        environ: The environment to read; ``os.environ`` when None.

    Returns:
        The rank information, or None.

    Raises:
        ConfigError: A variable is present but not a non-negative integer, or the values contradict each other.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    world_size = _int(env, "WORLD_SIZE", minimum=1)
    if world_size <= 1:
        return None
    rank = _int(env, "RANK")
    local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    local_world_size = _int(env, "LOCAL_WORLD_SIZE", minimum=1) if "LOCAL_WORLD_SIZE" in env else world_size
    worker_index = _int(env, "GROUP_RANK") if "GROUP_RANK" in env else rank // local_world_size
    if rank >= world_size:
        raise ConfigError(f"must be < WORLD_SIZE ({rank} >= {world_size})", key="RANK")
    if local_rank >= local_world_size:
        raise ConfigError(f"must be < LOCAL_WORLD_SIZE ({local_rank} >= {local_world_size})", key="LOCAL_RANK")
    num_workers = max(1, -(-world_size // local_world_size))
    return DistributedInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        worker_index=worker_index,
        num_workers=num_workers,
    )


def _int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"must be an integer (got {raw!r})", key=name) from None
    if value < minimum:
        raise ConfigError(f"must be >= {minimum} (got {value})", key=name)
    return value
