"""1 rank vs 2 gloo ranks: with global denominators/statistics the loss, its gradients, the
weights and the Rho-1 selection are the same as on one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.fixtures.distributed import run_distributed
from wmtp.losses.alignment import IGNORE_INDEX, count_valid_targets
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.weighting.gae import compute_gae
from wmtp.weighting.rho1 import rho1_weights
from wmtp.weighting.weights import advantage_weights

pytestmark = pytest.mark.distributed


def make_batch(B=4, S=10, D=6, V=23, H=3):
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(B, S, D, generator=g, dtype=torch.float64) for _ in range(H)]
    w = torch.randn(V, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, :3] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX  # a shorter, right-padded sample: ranks hold unequal counts
    values = torch.rand(B, S, generator=g, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ref = torch.rand(B, S, generator=g, dtype=torch.float64) * 3
    pol = torch.rand(B, S, H, generator=g, dtype=torch.float64) * 3
    return hidden, w, labels, values, rewards, ref, pol


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def _all_gather_var(t: torch.Tensor) -> torch.Tensor:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, t)
    return torch.cat(out)


def step(hidden, w, labels, values, rewards, ref, pol, reduce_fn=None, gather_fn=None, denominators=None):
    """One scored training step: GAE weights → weighted MTP CE (and Rho-1 weights)."""
    hidden = [h.clone().requires_grad_(True) for h in hidden]
    w = w.clone().requires_grad_(True)
    resp = labels != IGNORE_INDEX
    adv, _ = compute_gae(values, resp, rewards, 0.9, 0.8)
    weights, _ = advantage_weights(adv, resp, reduce_fn=reduce_fn)
    out = mtp_cross_entropy(hidden, w, labels, weights=weights, denominators=denominators, chunk_size=4)
    out.loss.backward()
    rho, _ = rho1_weights(pol, ref, labels, ratio=0.4, gather_fn=gather_fn)
    return out.loss.detach(), [h.grad for h in hidden], w.grad, weights, rho


def _rank_fn(rank: int, world_size: int) -> dict:
    hidden, w, labels, values, rewards, ref, pol = make_batch()
    sl = slice(rank * 2, rank * 2 + 2)
    denominators = _all_reduce(count_valid_targets(labels[sl], 3))  # global N_k
    loss, gh, gw, weights, rho = step([h[sl] for h in hidden], w, labels[sl], values[sl], rewards[sl],
                                      ref[sl], pol[sl], _all_reduce, _all_gather_var, denominators)
    # Global denominators ⇒ the global loss/gradient is the SUM over ranks (not DDP's mean).
    loss = _all_reduce(loss.clone())
    gw = _all_reduce(gw.clone())
    return {"loss": loss, "grad_hidden": gh, "grad_w": gw, "weights": weights, "rho": rho}


def test_two_ranks_equal_one_rank():
    hidden, w, labels, values, rewards, ref, pol = make_batch()
    loss, gh, gw, weights, rho = step(hidden, w, labels, values, rewards, ref, pol)
    ranks = run_distributed(_rank_fn, 2)
    assert torch.allclose(ranks[0]["loss"], loss, atol=1e-12) and torch.allclose(ranks[1]["loss"], loss, atol=1e-12)
    assert torch.allclose(ranks[0]["grad_w"], gw, atol=1e-12)
    for k in range(3):
        assert torch.allclose(torch.cat([r["grad_hidden"][k] for r in ranks]), gh[k], atol=1e-12)
    assert torch.allclose(torch.cat([r["weights"] for r in ranks]), weights, atol=1e-12)
    assert torch.allclose(torch.cat([r["rho"] for r in ranks]), rho, atol=1e-12)


def _failing_fn(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")


def test_run_distributed_reports_rank_failure():
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        run_distributed(_failing_fn, 2)
