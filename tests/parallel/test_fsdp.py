"""FSDP2 on 2 gloo ranks equals one process on the same global batch; activation checkpointing
keeps names and gradients; compile keeps names."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from tests.fixtures.distributed import run_distributed
from tests.parallel.common import fresh_model, global_batch, mtp_loss, optimizer_for, shard
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.parallel.fsdp import apply_activation_checkpointing, apply_fsdp
from wmtp.parallel.reduce import global_sum

STEPS = 2


def _train(model, opt, rank=0, world_size=1):
    losses = []
    for step in range(STEPS):
        tokens, labels = global_batch(step)
        loss = mtp_loss(model, shard(tokens, rank, world_size), shard(labels, rank, world_size))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(global_sum(loss.detach()).item())
    return losses


CASES = [(False, False), (True, False), (False, True)]  # (activation checkpointing, bf16 mixed precision)


def _fsdp_rank(rank, world_size):
    """All cases in one launch (spawning ranks costs more than the training)."""
    results = {}
    for ac, mixed_precision in CASES:
        model = fresh_model()
        if ac:
            apply_activation_checkpointing(model)
        apply_fsdp(model, mixed_precision=mixed_precision)
        opt = optimizer_for(model)
        losses = _train(model, opt, rank, world_size)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        results[ac, mixed_precision] = (losses, full)
    return results


@pytest.fixture(scope="module")
def fsdp_results():
    return run_distributed(_fsdp_rank, 2)


@pytest.fixture(scope="module")
def reference():
    model = fresh_model()
    return _train(model, optimizer_for(model)), model.state_dict()


@pytest.mark.distributed
@pytest.mark.parametrize("ac", [False, True])
def test_fsdp_two_ranks_equal_one_process(fsdp_results, reference, ac):
    ref_losses, ref = reference
    (losses0, full0), (losses1, _) = fsdp_results[0][ac, False], fsdp_results[1][ac, False]
    assert losses0 == losses1
    for a, b in zip(losses0, ref_losses, strict=True):
        assert abs(a - b) < 1e-5
    assert set(full0) == set(ref)
    for key, value in ref.items():
        torch.testing.assert_close(full0[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.distributed
def test_fsdp_bf16_mixed_precision_runs_close(fsdp_results, reference):
    losses, full = fsdp_results[0][False, True]
    assert all(abs(a - b) < 0.05 for a, b in zip(losses, reference[0], strict=True))
    assert all(v.dtype == torch.float32 for v in full.values())  # fp32 master weights
    # bf16 compute moved the weights by a different amount than fp32 did, but not far.
    diff = max((full[k] - v).abs().max().item() for k, v in reference[1].items())
    assert 0 < diff < 0.05


def test_activation_checkpointing_keeps_keys_grads_and_recomputes(tiny_args):
    plain, ckpt = fresh_model(), apply_activation_checkpointing(fresh_model())
    assert list(dict(plain.named_parameters())) == list(dict(ckpt.named_parameters()))
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    saved = {"plain": 0, "ckpt": 0}
    tokens, labels = global_batch(0)
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        def pack(t, name=name):
            saved[name] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = mtp_loss(model, tokens, labels)
        loss.backward()
    assert saved["ckpt"] < 0.5 * saved["plain"]  # blocks keep only their inputs
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6, msg=name)
    # Inference with a KV cache is unaffected.
    with torch.no_grad():
        full = ckpt(tokens, return_logits=True).logits
        cache = ckpt.allocate_cache(4, 16)
        a = ckpt(tokens[:, :10], cache=cache, return_logits=True).logits
        b = ckpt(tokens[:, 10:], start_pos=10, cache=cache, return_logits=True).logits
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_value_model(tiny_args):
    vm = build_value_model(value_args_from_policy(tiny_args), head="mlp", seed=0)
    keys = list(vm.state_dict())
    tokens, _ = global_batch(0)
    expected = vm(tokens)
    apply_activation_checkpointing(vm)
    assert list(vm.state_dict()) == keys
    torch.testing.assert_close(vm(tokens), expected)


def test_rejects_other_modules():
    with pytest.raises(TypeError, match="Transformer or ValueModel"):
        apply_fsdp(torch.nn.Linear(2, 2), mixed_precision=False)
