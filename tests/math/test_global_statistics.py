"""Statistics the docs call global equal their 1-process value on 2 gloo ranks, each holding half
of the same global batch: token-weight mean/std/min/max/entropy/clip share, the value loss's clip
fraction and explained variance (as the verifiable recipe sums them), and critic staleness (the
stalest micro-batch of any rank)."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from wmtp.losses.value import (
    clipped_value_loss,
    explained_variance,
    explained_variance_from_moments,
    explained_variance_moments,
)
from wmtp.parallel.reduce import DistEnv, gather_cat, global_max_value, global_sum, reduce_fn, reduce_max_fn
from wmtp.weighting.weights import advantage_weights

pytestmark = pytest.mark.distributed


def global_batch():
    g = torch.Generator().manual_seed(1)
    B, S = 4, 12
    adv = torch.randn(B, S, generator=g, dtype=torch.float64) * 2
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, (s, e) in enumerate([(2, 11), (3, 6), (1, 12), (4, 9)]):  # unequal counts per rank
        mask[b, s:e] = True
    v_old = torch.rand(B, S, generator=g, dtype=torch.float64)
    v_new = v_old + torch.randn(B, S, generator=g, dtype=torch.float64) * 0.3
    returns = torch.rand(B, S, generator=g, dtype=torch.float64)
    return adv, mask, v_old, v_new, returns


def statistics(adv, mask, v_old, v_new, returns, versions, layout):
    """What the verifiable recipe logs, computed as it computes them (micro-batches of 1 row)."""
    _, ws = advantage_weights(adv, mask, temperature=0.7, clip_min=0.3, clip_max=2.0, renormalize=True,
                              reduce_fn=reduce_fn(layout), reduce_max_fn=reduce_max_fn(layout))
    value_denom = global_sum(mask.sum().double(), layout)
    clipped, moments = torch.zeros((), dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for i in range(adv.shape[0]):
        sl = slice(i, i + 1)
        vl = clipped_value_loss(v_new[sl], v_old[sl], returns[sl], mask[sl], clip_range=0.2)
        clipped += vl.clip_fraction.double() * mask[sl].sum()
        moments += explained_variance_moments(v_old[sl], returns[sl], mask[sl])
    out = {f"weights/{k}": float(getattr(ws, k)) for k in ("mean", "std", "min", "max", "entropy",
                                                           "frac_clipped", "mean_before_renorm")}
    out["clip_fraction"] = float(global_sum(clipped, layout) / value_denom)
    out["explained_variance"] = float(explained_variance_from_moments(global_sum(moments, layout)))
    out["critic_staleness"] = global_max_value(max(versions), layout)
    return out


def _rank(rank: int, world_size: int) -> dict:
    adv, mask, v_old, v_new, returns = global_batch()
    sl = slice(2 * rank, 2 * rank + 2)
    versions = [[0, 1], [3, 0]][rank]  # staleness of each micro-batch on this rank
    return statistics(adv[sl], mask[sl], v_old[sl], v_new[sl], returns[sl], versions, DistEnv.from_env("cpu"))


def test_two_ranks_report_the_one_process_statistics():
    adv, mask, v_old, v_new, returns = global_batch()
    one = statistics(adv, mask, v_old, v_new, returns, [0, 1, 3, 0], DistEnv.from_env("cpu"))
    # the 1-process values are the obvious ones
    w, _ = advantage_weights(adv, mask, temperature=0.7, clip_min=0.3, clip_max=2.0, renormalize=True)
    vals = w[mask]
    p = vals / vals.sum()
    assert one["weights/mean"] == pytest.approx(1.0, abs=1e-12)
    assert one["weights/std"] == pytest.approx(float(vals.std(unbiased=False)), abs=1e-12)
    assert one["weights/min"] == float(vals.min()) and one["weights/max"] == float(vals.max())
    assert one["weights/entropy"] == pytest.approx(float(-(p * p.log()).sum() / torch.log(torch.tensor(
        float(vals.numel()), dtype=torch.float64))), abs=1e-12)
    assert one["explained_variance"] == pytest.approx(float(explained_variance(v_old, returns, mask)), abs=1e-12)
    assert one["clip_fraction"] == pytest.approx(float(((v_new - v_old).abs() > 0.2)[mask].double().mean()))
    assert one["critic_staleness"] == 3.0

    ranks = run_distributed(_rank, 2)
    for r in ranks:
        assert r.keys() == one.keys()
        for key, value in one.items():
            assert r[key] == pytest.approx(value, abs=1e-12), key


# ------------------------------------------------------------------------------------------ Rho-1
H = 2


def rho1_global_batch():
    """Two micro-batches of 4 rows each; rank r holds rows 2r, 2r+1 of each micro-batch."""
    g = torch.Generator().manual_seed(2)
    B, S = 4, 10
    micro = []
    for _ in range(2):
        policy = torch.rand(B, S, H, generator=g, dtype=torch.float64) * 3
        ref = torch.rand(B, S, generator=g, dtype=torch.float64) * 3
        tokens = torch.randint(1, 50, (B, S), generator=g)
        labels = torch.full((B, S), -100)
        for b in range(B):  # responses of unequal length per rank
            start, end = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(6, S + 1, (1,), generator=g))
            labels[b, start:end] = tokens[b, start:end]
        micro.append((policy, ref, labels))
    return micro


def rho1_statistics(micro, mode, layout):
    """What the Rho-1 recipe logs (`train/rho1/*`), computed as it computes them."""
    from wmtp.losses.alignment import valid_mask
    from wmtp.weighting.rho1 import rho1_weights, step_rho1_stats

    dist_kw = ({"gather_fn": lambda x: gather_cat(x, layout), "reduce_fn": reduce_fn(layout)}
               if layout.distributed else {})
    parts, weights = [], []
    for policy, ref, labels in micro:
        w, stats = rho1_weights(policy, ref, labels, mode=mode, ratio=0.4, temperature=0.8, clip_min=0.5,
                                clip_max=1.6, **dist_kw)
        parts.append((stats, valid_mask(labels, H).sum((0, 1))))
        weights.append(w)
    stats = step_rho1_stats(parts, reduce_fn(layout))
    return {f"{name}/head{k + 1}": float(v) for name in ("kept_fraction", "mean_weight", "mean_excess")
            for k, v in enumerate(getattr(stats, name))}, weights


def _rho1_rank(rank: int, world_size: int, mode: str) -> dict:
    mine = [tuple(t[2 * rank:2 * rank + 2] for t in m) for m in rho1_global_batch()]
    return rho1_statistics(mine, mode, DistEnv.from_env("cpu"))[0]


@pytest.mark.parametrize("mode", ["topk", "continuous"])
def test_two_ranks_report_the_one_process_rho1_statistics(mode):
    from wmtp.losses.alignment import align_target_weights, valid_mask

    micro = rho1_global_batch()
    one, weights = rho1_statistics(micro, mode, DistEnv.from_env("cpu"))
    # the 1-process values are the obvious ones: over every valid target of the step
    valid = torch.cat([valid_mask(lab, H) for _, _, lab in micro])
    w = torch.cat(weights)
    e = torch.cat([p - align_target_weights(r, H) for p, r, _ in micro])
    for k in range(H):
        v = valid[..., k]
        assert one[f"mean_weight/head{k + 1}"] == pytest.approx(float(w[..., k][v].mean()), abs=1e-12)
        assert one[f"mean_excess/head{k + 1}"] == pytest.approx(float(e[..., k][v].mean()), abs=1e-12)
        if mode == "topk":
            assert one[f"kept_fraction/head{k + 1}"] == pytest.approx(float((w[..., k][v] > 0).double().mean()),
                                                                      abs=1e-12)
    assert 0 < one["kept_fraction/head2"] < 1

    for r in run_distributed(_rho1_rank, 2, mode):
        assert r.keys() == one.keys()
        for key, value in one.items():
            assert r[key] == pytest.approx(value, abs=1e-12), key
