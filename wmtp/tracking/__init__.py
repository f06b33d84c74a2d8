"""Experiment tracking: one `MetricLogger` interface; stdout, JSONL and MLflow backends.

Importing this package does not import mlflow (only `wmtp.tracking.mlflow_logger` does, lazily).
"""

from wmtp.config.redaction import redact
from wmtp.tracking.base import MetricLogger, MultiLogger, NullLogger
from wmtp.tracking.registry import LOGGER_BACKENDS, build_logger, mlflow_run_id, register_backend

__all__ = [
    "LOGGER_BACKENDS",
    "MetricLogger",
    "MultiLogger",
    "NullLogger",
    "build_logger",
    "mlflow_run_id",
    "redact",
    "register_backend",
]
