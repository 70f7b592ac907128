"""wandbflow's benchmark suite: each figure a ratio measured side by side in one run (``python -m benchmarks``)."""
