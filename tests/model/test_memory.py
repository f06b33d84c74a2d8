"""Analytic parameter counts, FLOPs and memory against the real modules and hand-derived numbers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wmtp.model.args import PRESETS
from wmtp.model.memory import GIB, count_parameters, estimate_memory, flops_per_token
from wmtp.model.transformer import build_model
from wmtp.model.value import build_value_model, value_args_from_policy


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_count_parameters_equals_module(preset):
    args = PRESETS[preset]
    model = build_model(args, device="meta")
    assert count_parameters(args) == sum(p.numel() for p in model.parameters())
    vargs = value_args_from_policy(args)
    for head in ("linear", "mlp"):
        vm = build_value_model(vargs, head=head, device="meta")
        assert count_parameters(vargs, value_head=head) == sum(p.numel() for p in vm.parameters())


def test_7b_mtp4_count_by_hand():
    # 32·(4·4096² + 3·4096·11008 + 2·4096) + 2·32000·4096 + 4096
    assert count_parameters(PRESETS["7b-mtp4"]) == 6_738_415_616


def test_flops_matmul_term_equals_flop_counter(tiny_args):
    """The 6·N_mm term counts exactly the matmuls of forward+backward (output applied once per
    head); the CPU SDPA kernel is not counted by FlopCounterMode, so the attention term is removed."""
    model = build_model(tiny_args, seed=0)
    B, S = 2, 16
    tokens = torch.randint(0, tiny_args.vocab_size, (B, S))
    with FlopCounterMode(display=False) as counter:
        model(tokens, return_logits=True).logits.sum().backward()
    a = tiny_args
    attention = 12 * a.n_layers * a.n_heads * a.head_dim * S
    assert counter.get_total_flops() == (flops_per_token(a, S) - attention) * B * S
    assert flops_per_token(a, S, training=False) * 3 == flops_per_token(a, S)


def test_flops_7b_mtp4_by_hand():
    a = PRESETS["7b-mtp4"]
    n_mm = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * 32000 * 4096
    assert flops_per_token(a, 2048) == 6 * n_mm + 12 * 32 * 4096 * 2048
    # ~42.9 GFLOP/token; the extra heads' output projections add 3·6·V·D ≈ 2.4 GFLOP over NTP.
    assert flops_per_token(a, 2048) - flops_per_token(PRESETS["7b-ntp"], 2048) == 6 * 3 * 32000 * 4096


@pytest.mark.parametrize("preset", ["tiny", "micro"])
def test_activation_estimate_matches_saved_tensors(preset):
    args = PRESETS[preset]
    model = build_model(args, seed=0)
    B, S = 2, 64
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(0, args.vocab_size, (B, S)))
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    measured = sum(n for ptr, n in saved.items() if ptr not in weights)
    est = estimate_memory(args, world_size=1, precision="fp32", fsdp=False, batch_size=B, seq_len=S,
                          activation_checkpointing=False)
    assert abs(measured / est.activations - 1) < 0.05


def test_7b_mtp4_a100x4_estimate_by_hand():
    a = PRESETS["7b-mtp4"]
    n = 6_738_415_616
    est = estimate_memory(a, world_size=4, precision="bf16", fsdp=True, batch_size=4, seq_len=2048,
                          activation_checkpointing=True)
    assert est.params == 4 * n // 4 and est.grads == 4 * n // 4 and est.optimizer == 8 * n // 4
    tokens = 4 * 2048
    per_block = (8 * 4096 + 2 * 4096 + 4 * 11008) * 2
    assert est.activations == tokens * (32 * 4096 * 2 + per_block) + tokens * 5 * 4096 * 2
    block = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    root = 2 * 32000 * 4096 + 4096
    # loss chunk + gathered current/prefetched block and root (bf16) + one block's bf16 gradient
    # and its fp32 reduce-scatter input
    assert est.transient == 2 * 4 * 1024 * 32000 + (2 * block + root) * 2 + block * (2 + 4)
    assert 30 < est.total / GIB < 40  # fits an 80 GB A100 with room for the critic
    no_ac = estimate_memory(a, world_size=4, precision="bf16", fsdp=True, batch_size=4, seq_len=2048,
                            activation_checkpointing=False)
    assert no_ac.activations > 8 * est.activations
    replica = estimate_memory(a, world_size=4, precision="fp32", fsdp=False, batch_size=1, seq_len=2048,
                              activation_checkpointing=True)
    assert replica.params + replica.grads + replica.optimizer == 16 * n
    assert "params" in est.summary() and "total" in est.summary()


def test_estimate_rejects_unknown_names():
    with pytest.raises(ValueError, match="allowed"):
        estimate_memory(PRESETS["tiny"], world_size=1, precision="fp8", fsdp=False, batch_size=1, seq_len=8,
                        activation_checkpointing=False)
    with pytest.raises(ValueError, match="adamw"):
        estimate_memory(PRESETS["tiny"], world_size=1, precision="fp32", fsdp=False, batch_size=1, seq_len=8,
                        activation_checkpointing=False, optimizer="lion")
