"""wmtp: Weighted Multi-Token Prediction on Ray."""

__version__ = "0.1.0"
