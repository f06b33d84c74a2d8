"""Global reductions: no-ops in one process, sums over 2 gloo ranks; DistEnv from the environment."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from wmtp.parallel.reduce import (
    DistEnv,
    all_reduce_sum,
    global_max,
    global_mean,
    global_sum,
    init_process_group_if_needed,
    is_distributed,
)


def test_single_process_is_identity():
    assert not is_distributed()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert torch.equal(global_sum(t), t) and torch.equal(global_mean(t), t) and torch.equal(global_max(t), t)


def test_dist_env_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = DistEnv.from_env(device_type="cpu")
    assert (env.rank, env.world_size, env.local_rank, env.device) == (3, 4, 1, torch.device("cpu"))
    assert not env.is_main
    assert DistEnv.from_env(device_type="cuda").device == torch.device("cuda", 1)


def test_init_is_skipped_for_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    env = init_process_group_if_needed()
    assert env.world_size == 1 and env.is_main and not is_distributed()


def _reduce_rank(rank, world_size):
    env = init_process_group_if_needed()  # already initialised by the launcher: left alone
    x = torch.tensor([float(rank + 1), 10.0 * rank])
    grad_carrier = torch.tensor(float(rank + 1), requires_grad=True)
    s = global_sum(grad_carrier)
    return {
        "env": (env.rank, env.world_size),
        "sum": global_sum(x),
        "mean": global_mean(x),
        "max": global_max(x),
        "x_untouched": x,
        "inplace": all_reduce_sum(torch.tensor([rank], dtype=torch.long)),
        "detached": not s.requires_grad,
    }


@pytest.mark.distributed
def test_two_rank_reductions():
    r0, r1 = run_distributed(_reduce_rank, 2)
    assert r0["env"] == (0, 2) and r1["env"] == (1, 2)
    for r in (r0, r1):
        assert torch.equal(r["sum"], torch.tensor([3.0, 10.0]))
        assert torch.equal(r["mean"], torch.tensor([1.5, 5.0]))
        assert torch.equal(r["max"], torch.tensor([2.0, 10.0]))
        assert torch.equal(r["inplace"], torch.tensor([1]))
        assert r["detached"]
    assert torch.equal(r1["x_untouched"], torch.tensor([2.0, 10.0]))
