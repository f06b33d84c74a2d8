"""HSDP with gradient accumulation: gradients cross the replicate dimension once per optimizer
step (`wmtp.parallel.fsdp.accumulate`), not once per micro-batch, and are the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.fixtures.distributed import run_distributed
from tests.parallel.common import fresh_model, global_batch, mtp_loss, shard
from wmtp.parallel.fsdp import accumulate, apply_fsdp, fsdp_mesh

GRAD_ACCUM = 3
STEPS = 2


def _micro_batches(step: int, rank: int, world_size: int):
    """GRAD_ACCUM micro-batches per rank per step (the global batch of step `step * 3 + i`)."""
    out = []
    for i in range(GRAD_ACCUM):
        tokens, labels = global_batch(step * GRAD_ACCUM + i)
        out.append((shard(tokens, rank, world_size), shard(labels, rank, world_size)))
    return out


def _hsdp_rank(rank, world_size):
    """2 ranks as 2 HSDP replicas (mesh 2x1): count the all-reduces on the replicate group per step,
    syncing once (accumulate) and every micro-batch (FSDP2's default)."""
    mesh = fsdp_mesh("cpu", world_size, replicas=world_size)
    replicate = mesh.get_group("replicate")
    calls = []
    all_reduce = dist.all_reduce

    def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if group is replicate:
            calls.append(tensor.numel())
        return all_reduce(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = counting
    results = {}
    try:
        for mode in ("once", "every"):
            model = apply_fsdp(fresh_model(), mesh=mesh, mixed_precision=False)
            per_step, grads = [], []
            for step in range(STEPS):
                micro = _micro_batches(step, rank, world_size)
                calls.clear()
                for tokens, labels in (accumulate([model], micro) if mode == "once" else micro):
                    mtp_loss(model, tokens, labels).backward()
                per_step.append((len(calls), sum(calls)))
                grads.append({n: p.grad.full_tensor().clone() for n, p in model.named_parameters()})
                model.zero_grad(set_to_none=True)
            results[mode] = (per_step, grads)
        results["fsdp_units"] = sum(1 for m in model.modules() if type(m).__name__.startswith("FSDP"))
        results["params"] = sum(p.numel() for p in model.parameters())
    finally:
        dist.all_reduce = all_reduce
    return results


@pytest.fixture(scope="module")
def hsdp():
    return run_distributed(_hsdp_rank, 2)


@pytest.fixture(scope="module")
def reference_grads():
    """One process, the whole global batch of every micro-batch: Σ over micro-batches and ranks."""
    model = fresh_model()
    out = []
    for step in range(STEPS):
        for i in range(GRAD_ACCUM):
            tokens, labels = global_batch(step * GRAD_ACCUM + i)
            # mtp_loss divides by counts summed over ranks (global_sum: one process here).
            mtp_loss(model, tokens, labels).backward()
        out.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    return out


@pytest.mark.distributed
def test_hsdp_all_reduces_across_replicas_once_per_step(hsdp):
    r = hsdp[0]
    units = r["fsdp_units"]
    for (n_once, numel_once), (n_every, numel_every) in zip(r["once"][0], r["every"][0], strict=True):
        assert n_once == units  # one all-reduce per FSDP unit, in the last micro-batch only
        assert n_every == GRAD_ACCUM * units  # FSDP2's default: every micro-batch
        # The bytes that cross the replicate dimension: the model's gradients once vs grad_accum times.
        assert numel_once == r["params"] and numel_every == GRAD_ACCUM * numel_once


@pytest.mark.distributed
def test_hsdp_once_per_step_gives_the_same_gradients(hsdp, reference_grads):
    for rank in hsdp:
        for once, every, ref in zip(rank["once"][1], rank["every"][1], reference_grads, strict=True):
            for name, g in ref.items():
                torch.testing.assert_close(once[name], every[name], atol=1e-6, rtol=1e-5, msg=name)
                torch.testing.assert_close(once[name], g, atol=1e-5, rtol=1e-4, msg=name)
