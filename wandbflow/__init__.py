"""wandbflow: Weights & Biases tracking as part of how notebook work runs."""

__version__ = "0.1.0"
