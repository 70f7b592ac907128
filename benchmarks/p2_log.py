"""P2: ``run.log`` throughput inside a wandbflow scope vs raw ``run.log`` on a raw run (target >= 0.97x)."""

from __future__ import annotations

import os
import tempfile
import time

from benchmarks.harness import Figure, spread


def _seconds(run, steps: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(steps):
        run.log({"loss": 1.0 / (i + 1), "acc": i / steps})
    return time.perf_counter() - start


def measure(smoke: bool) -> Figure:
    import wandb

    import wandbflow as wf

    steps, blocks, repeats = (200, 2, 1) if smoke else (5000, 20, 5)
    block = steps // blocks
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ["WANDB_SILENT"] = "true"
        for _ in range(repeats):
            raw = wandb.init(mode="offline", dir=root, project="bench", reinit="create_new")
            with wf.task("p2", mode="offline", dir=root, project="bench", quiet=True) as scoped:
                _seconds(raw, block)  # warm both paths before timing
                _seconds(scoped, block)
                # short blocks in ABBA order, so the W&B service's backlog and any drift fall on both alike
                took = {"raw": 0.0, "scoped": 0.0}
                for i in range(blocks):
                    for name in ("raw", "scoped") if i % 2 == 0 else ("scoped", "raw"):
                        took[name] += _seconds(raw if name == "raw" else scoped, block)
            raw.finish()
            ratios.append(took["raw"] / took["scoped"])
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
        details={"steps": steps, "blocks": blocks},
    )
