"""P2: ``run.log`` throughput inside a wandbflow scope vs raw ``run.log`` on a raw run (target >= 0.97x)."""

from __future__ import annotations

import os
import tempfile
import time

from benchmarks.harness import Figure, spread


def _rate(run, steps: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(steps):
        run.log({"loss": 1.0 / (i + 1), "acc": i / steps})
    return steps / (time.perf_counter() - start)


def measure(smoke: bool) -> Figure:
    import wandb

    import wandbflow as wf

    steps, repeats = (200, 1) if smoke else (5000, 5)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ["WANDB_SILENT"] = "true"
        for _ in range(repeats):
            raw = wandb.init(mode="offline", dir=root, project="bench", reinit="create_new")
            with wf.task("p2", mode="offline", dir=root, project="bench", quiet=True) as scoped:
                _rate(raw, steps // 10)  # warm both paths before timing
                _rate(scoped, steps // 10)
                # interleave: half the raw steps, the scoped steps, then the other half of the raw steps
                first = _rate(raw, steps // 2)
                ours = _rate(scoped, steps)
                second = _rate(raw, steps // 2)
            raw.finish()
            ratios.append(ours / ((first + second) / 2))
    median, low, high = spread(ratios)
    return Figure(
        id="P2",
        title="run.log throughput in a scope vs raw run.log",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=repeats,
        target=">= 0.97",
        passed=median >= 0.97,
        details={"steps": steps},
    )
