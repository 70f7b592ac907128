"""Run the benchmarks: ``python -m benchmarks [--smoke] [--only P2,P7] [--out benchmarks/results.json]``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from benchmarks.harness import Figure, machine

# Figure id -> module with ``measure(smoke: bool) -> Figure``. Add a figure with one line here.
REGISTRY: dict[str, str] = {
    "P1": "benchmarks.p1_cell",
    "P2": "benchmarks.p2_log",
    "P3": "benchmarks.p3_launch",
    "P4": "benchmarks.p4_relay",
    "P5": "benchmarks.p5_trials",
    "P6": "benchmarks.p6_parallel",
    "P7": "benchmarks.p7_ledger",
}


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table(figures: list[Figure], info: dict) -> str:
    lines = [
        f"Measured {info['date']} on {info['cpus']} CPUs, Python {info['python']}, {info['platform']}.",
        "",
        "| figure | what | median | min-max | n | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.id} | {f.title} | {_num(f.value)} {f.unit} | {_num(f.low)} to {_num(f.high)} | {f.n} | {f.target} | "
            f"{'yes' if f.passed else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: prove every figure is produced")
    parser.add_argument("--only", help="comma-separated figure ids, e.g. P2,P7")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else list(REGISTRY)
    unknown = [w for w in wanted if w not in REGISTRY]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    figures = []
    for figure_id in wanted:
        print(f"measuring {figure_id} ...", file=sys.stderr, flush=True)
        figures.append(importlib.import_module(REGISTRY[figure_id]).measure(args.smoke))
    info = {**machine(), "smoke": args.smoke}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "figures": [f.to_json() for f in figures]}, indent=2))
    markdown = table(figures, info)
    out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
