"""GPU memory in the step metrics (CUDA only, silent on CPU) and the allocator's configuration,
exercised on this CPU machine with a stand-in for `torch.cuda` (its memory queries only)."""

from __future__ import annotations

import torch

from wmtp.orchestration.dashboard import GAUGES, _first_match
from wmtp.parallel.reduce import DistEnv
from wmtp.training.device_memory import ALLOCATOR_SETTINGS, configure_allocator, gpu_memory
from wmtp.training.state import memory_metrics
from wmtp.training.throughput import ThroughputMeter

GIB = 1024**3


class CudaQueries:
    """What `gpu_memory` and `configure_allocator` ask of `torch.cuda`, with set answers."""

    def __init__(self, available: bool = True):
        self.available, self.settings = available, []
        self.memory = type("Memory", (), {"_set_allocator_settings": staticmethod(self.settings.append)})

    def is_available(self):
        return self.available

    def memory_allocated(self, device):
        return 3 * GIB

    def memory_reserved(self, device):
        return 4 * GIB

    def max_memory_allocated(self, device):
        return 5 * GIB

    def max_memory_reserved(self, device):
        return 6 * GIB


def test_gpu_memory_is_silent_off_cuda():
    assert gpu_memory(torch.device("cpu")) == {}
    assert gpu_memory(torch.device("meta")) == {}


def test_gpu_memory_reads_allocated_reserved_and_peaks_in_gib():
    assert gpu_memory(torch.device("cuda", 0), CudaQueries()) == {
        "gpu_mem_allocated_gib": 3.0, "gpu_mem_reserved_gib": 4.0, "gpu_mem_peak_gib": 5.0,
        "gpu_mem_peak_reserved_gib": 6.0}


def test_step_metrics_carry_gpu_memory_only_on_cuda():
    cuda = DistEnv(device=torch.device("cuda", 0))
    meter = ThroughputMeter(memory=memory_metrics(cuda, CudaQueries()))
    metrics = meter.metrics()
    assert metrics["perf/gpu_mem_peak_gib"] == 5.0 and metrics["perf/gpu_mem_reserved_gib"] == 4.0
    assert not [k for k in metrics if k.startswith("worker/")]  # one process: the rank's own values
    # The dashboard's gauges read this rank's values (rank-tagged), never the per-rank copies.
    assert _first_match({"worker/1/perf/gpu_mem_peak_gib": 9.0, **metrics}, GAUGES["gpu_mem_peak_gib"][1]) == 5.0
    # CPU: the meter built by the recipes has no memory callable, and logs no GPU key.
    from wmtp.config.loader import load_config
    from wmtp.model.transformer import build_model
    from wmtp.parallel.build import policy_args
    from wmtp.training.state import throughput_meter

    cfg = load_config(None, None, None, True, [])
    cpu_meter = throughput_meter(build_model(policy_args(cfg), device="meta"), cfg, DistEnv())
    assert cpu_meter.memory is None and not [k for k in cpu_meter.metrics() if "gpu_mem" in k]


def test_allocator_gets_expandable_segments_unless_the_user_chose():
    env, cuda = {}, CudaQueries()
    assert configure_allocator(env, cuda) == ALLOCATOR_SETTINGS
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"} and cuda.settings == [ALLOCATOR_SETTINGS]
    mine, cuda = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, CudaQueries()
    assert configure_allocator(mine, cuda) is None and cuda.settings == []
    assert mine == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    cpu_env = {}
    assert configure_allocator(cpu_env, CudaQueries(available=False)) is None and cpu_env == {}
