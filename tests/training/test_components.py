"""Optimizer groups, LR schedule numbers, precision, seeding, non-finite guard, throughput."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch

from wmtp.training import (
    NonFiniteGuard,
    NonFiniteLossError,
    ThroughputMeter,
    autocast_context,
    build_optimizer,
    build_scheduler,
    param_groups,
    peak_flops,
    rng_state,
    seed_everything,
    set_rng_state,
)
from wmtp.training.throughput import count_step


def test_param_groups_no_decay_on_norms_and_biases(tiny_model):
    groups = param_groups(tiny_model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    for name, p in tiny_model.named_parameters():
        assert (id(p) in decay) == (p.ndim >= 2), name
        if "norm" in name:
            assert id(p) not in decay
    n_total = sum(1 for _ in tiny_model.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_total

    lin = torch.nn.Linear(3, 2)
    lin.weight.requires_grad_(False)
    assert [len(g["params"]) for g in param_groups(lin, 0.1)] == [1]  # the bias only, no-decay group
    opt = build_optimizer(tiny_model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"] is True
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_weight_decay_spares_norm_gain():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before_gain = model[1].weight.detach().clone()
    before_w = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled decay moves weights: w <- w (1 - lr wd)
    torch.testing.assert_close(model[1].weight, before_gain)
    torch.testing.assert_close(model[0].weight, before_w * (1 - 0.1 * 0.5))


def test_schedule_hand_numbers():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up (s+1)/4 of 2.0; then 0.1 + 0.9 (1 + cos(pi min(1, (s-4)/8))) / 2 of 2.0
    expected = [0.5, 1.0, 1.5, 2.0]
    expected += [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 4) / 8)))) for s in range(4, 14)]
    assert expected[4] == 2.0 and expected[8] == pytest.approx(1.1) and expected[12] == pytest.approx(0.2)
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[12] == lrs[13] == pytest.approx(0.2)  # floor after total_steps
    no_warmup = build_scheduler(torch.optim.SGD([p], lr=1.0), warmup_steps=0, total_steps=2, min_lr_ratio=0.0)
    assert [no_warmup.lr_lambdas[0](s) for s in range(3)] == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_scheduler(opt, warmup_steps=1, total_steps=2, min_lr_ratio=1.5)


def test_autocast_keeps_fp32_master_weights():
    model = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast_context("cpu", "bf16"):
        y = model(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert model.weight.dtype == torch.float32 and model.weight.grad.dtype == torch.float32
    with autocast_context("cpu", "fp32"):
        assert model(x).dtype == torch.float32
    with pytest.raises(ValueError, match=r"unknown 'fp16'; allowed: \['bf16', 'fp32'\]"):
        autocast_context("cpu", "fp16")


def test_rng_state_round_trip(tmp_path):
    seed_everything(123)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(999)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_nonfinite_stop_names_step_and_checkpoint(tmp_path):
    guard = NonFiniteGuard("stop", last_checkpoint=lambda: tmp_path / "checkpoints" / "step_000050")
    assert guard.check(torch.tensor(1.5), step=1) is False
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 7.*step_000050"):
        guard.check(torch.tensor(float("nan")), step=7)
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been saved yet"):
        NonFiniteGuard("stop").check(float("inf"), step=2)
    with pytest.raises(ValueError, match=r"allowed: \['stop', 'skip'\]"):
        NonFiniteGuard("ignore")


def test_nonfinite_skip_counts_and_limits(caplog):
    guard = NonFiniteGuard("skip", max_skipped=2)
    with caplog.at_level(logging.WARNING):
        assert guard.check(float("nan"), 1) is True
        assert guard.check(2.0, 2) is False
        assert guard.check(float("-inf"), 3) is True
    assert guard.skipped == 2 and "batch skipped (2/2)" in caplog.text
    restored = NonFiniteGuard("skip", max_skipped=2)
    restored.load_state_dict(guard.state_dict())
    with pytest.raises(NonFiniteLossError, match="3 batches skipped, more than train.max_skipped_batches=2"):
        restored.check(float("nan"), 4)


def test_throughput_counts_totals_window_rates_and_mfu():
    now, reduced = [0.0], []

    def two_equal_ranks(t):  # what an all-reduce SUM over two ranks holding the same counts gives
        reduced.append(t.clone())
        return 2 * t

    meter = ThroughputMeter(flops_per_token=1e9, peak_flops=1e12, n_devices=2, clock=lambda: now[0],
                            sum_ranks=two_equal_ranks)
    meter.start()
    for dt, count in ((1.0, (1000, 600)), (0.5, (1000, 500)), (1.0, (3000, 900))):
        now[0] += dt
        meter.update(torch.tensor(count))
    # window of 2.5 s: 2 × 5000 tokens, 2 × 2000 targets; the last step 2 × (3000, 900)
    assert meter.metrics() == {"train/tokens": 6000.0, "train/targets": 1800.0, "perf/tokens_seen": 10000.0,
                               "perf/targets_seen": 4000.0, "perf/tokens_per_s": pytest.approx(4000.0),
                               "perf/targets_per_s": pytest.approx(1600.0), "perf/mfu": pytest.approx(2.0)}
    assert len(reduced) == 1  # one all-reduce per logged step, none in update()
    now[0] += 2.0
    meter.update(torch.tensor([500, 400]), trained=False)  # a skipped batch: its targets trained nothing
    m = meter.metrics()  # the next window holds that step alone
    assert (m["train/targets"], m["perf/targets_seen"], m["perf/tokens_seen"]) == (0.0, 4000.0, 11000.0)
    assert (m["perf/tokens_per_s"], m["perf/targets_per_s"]) == (pytest.approx(500.0), 0.0)
    restored = ThroughputMeter()
    restored.load_state_dict(meter.state_dict())  # this rank's own totals
    assert restored.state_dict() == {"tokens": 5500, "targets": 2000}
    assert ThroughputMeter().metrics() == {"train/tokens": 0.0, "train/targets": 0.0, "perf/tokens_seen": 0.0,
                                           "perf/targets_seen": 0.0}
    older = ThroughputMeter(n_devices=2)
    older.load_state_dict({"total_tokens": 9000})  # written before targets: tokens × world size
    assert older.state_dict() == {"tokens": 4500, "targets": 0}


def test_count_step_counts_real_tokens_and_head1_targets_by_hand():
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, 5, 6, -100]])
    # 4 + 4 real tokens; head 1 predicts labels[:, 1:]: 2 + 2 targets; a second micro-batch adds to both
    assert count_step([mask], [labels]).tolist() == [8, 4]
    assert count_step([mask, mask[:1]], [labels, labels[:1]]).tolist() == [12, 6]


def test_peak_flops_table():
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA A10G") == 125e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("cpu") is None and peak_flops(None) is None


def test_nonfinite_consecutive_skips_stop_and_reset():
    guard = NonFiniteGuard("skip", max_skipped=10, max_consecutive=2)
    assert guard.check(float("nan"), 1) is True
    assert guard.check(1.0, 2) is False  # an accepted batch resets the run of skips
    assert guard.check(float("nan"), 3) is True
    restored = NonFiniteGuard("skip", max_skipped=10, max_consecutive=2)
    restored.load_state_dict(guard.state_dict())
    with pytest.raises(NonFiniteLossError, match=r"at step 4: 2 batches in a row skipped \(steps 3-4"):
        restored.check(float("inf"), 4)


def test_nonfinite_weights_are_named_with_the_step():
    import torch

    model = torch.nn.Linear(2, 2)
    guard = NonFiniteGuard("skip")
    guard.check_weights({"policy": model}, 3)  # finite: nothing happens
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights at step 7 in policy \(2 values\)"):
        guard.check_weights({"policy": model}, 7)
