"""DCP sharded checkpoints restore models and AdamW exactly: in one process, on 2 FSDP ranks, and
from 2 ranks into one process (resharding)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from tests.fixtures.distributed import run_distributed
from tests.parallel.common import ARGS, fresh_model, global_batch, mtp_loss, optimizer_for, shard
from wmtp.checkpoint import load_sharded, save_sharded
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.parallel.fsdp import apply_fsdp
from wmtp.parallel.materialize import load_full_tensors


def _step(model, opt, step, rank=0, world_size=1):
    tokens, labels = global_batch(step)
    loss = mtp_loss(model, shard(tokens, rank, world_size), shard(labels, rank, world_size))
    opt.zero_grad()
    loss.backward()
    opt.step()


def _critic_step(critic, opt, step):
    tokens, _ = global_batch(step)
    loss = critic(tokens).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _models():
    policy = fresh_model()
    critic = build_value_model(value_args_from_policy(ARGS), head="mlp", seed=1)
    return {"policy": policy, "critic": critic}, {"policy": optimizer_for(policy), "critic": optimizer_for(critic)}


def test_one_process_round_trip_is_exact(tmp_path):
    models, opts = _models()
    _step(models["policy"], opts["policy"], 0)
    _critic_step(models["critic"], opts["critic"], 0)
    torch.manual_seed(123)
    extra = {"step": 1, "rng": torch.get_rng_state(), "sampler": {"epoch": 0, "offset": 7}}
    save_sharded(tmp_path / "ckpt", models, opts, extra)
    _step(models["policy"], opts["policy"], 1)
    _critic_step(models["critic"], opts["critic"], 1)

    new_models, new_opts = _models()
    got = load_sharded(tmp_path / "ckpt", new_models, new_opts)
    assert got["step"] == 1 and got["sampler"] == {"epoch": 0, "offset": 7} and torch.equal(got["rng"], extra["rng"])
    assert new_opts["policy"].state_dict()["state"][0]["step"] == 1
    _step(new_models["policy"], new_opts["policy"], 1)
    _critic_step(new_models["critic"], new_opts["critic"], 1)
    for name in models:
        a, b = models[name].state_dict(), new_models[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_errors(tmp_path):
    models, opts = _models()
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_sharded(tmp_path / "nothing", models, opts)
    with pytest.raises(ValueError, match="no model of the same name"):
        save_sharded(tmp_path / "x", {"policy": models["policy"]}, {"critic": opts["critic"]}, {})


def _fsdp_rank(rank, world_size, folder):
    def build():
        model = fresh_model()
        apply_fsdp(model, mixed_precision=False)
        return model, optimizer_for(model)

    def full(model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every rank

    model, opt = build()
    _step(model, opt, 0, rank, world_size)
    after_first = full(model)
    save_sharded(folder, {"policy": model}, {"policy": opt}, {"rank": rank, "rng": torch.get_rng_state()})
    _step(model, opt, 1, rank, world_size)
    uninterrupted = full(model)

    model2, opt2 = build()
    extra = load_sharded(folder, {"policy": model2}, {"policy": opt2})
    _step(model2, opt2, 1, rank, world_size)
    resumed = full(model2)

    # A full (unsharded) state dict held by rank 0 alone loads into the sharded model too.
    model3, _ = build()
    load_full_tensors(model3, (lambda: dict(after_first).pop) if rank == 0 else None)
    return after_first, uninterrupted, resumed, extra, full(model3)


@pytest.mark.distributed
def test_fsdp_two_ranks_resume_exactly_and_reshard_to_one(tmp_path):
    folder = str(tmp_path / "ckpt")
    results = run_distributed(_fsdp_rank, 2, folder)
    for rank, (after_first, uninterrupted, resumed, extra, reloaded) in enumerate(results):
        assert extra["rank"] == rank and len(uninterrupted) == len(fresh_model().state_dict())
        for key in uninterrupted:
            assert torch.equal(uninterrupted[key], resumed[key]), key
            assert torch.equal(after_first[key], reloaded[key]), key
    # The 2-rank checkpoint loads into one process without FSDP (DCP reshards), optimizer included.
    after_first, uninterrupted = results[0][0], results[0][1]
    model = fresh_model()
    opt = optimizer_for(model)
    extra = load_sharded(folder, {"policy": model}, {"policy": opt})
    assert extra["rank"] == 0
    assert all(torch.equal(model.state_dict()[k], after_first[k]) for k in after_first)
    _step(model, opt, 1)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, uninterrupted[key], atol=1e-6, rtol=0)
