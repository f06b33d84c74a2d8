"""Model identity: a checkpoint's params.json and the config are reconciled by the rule in
docs/MODEL.md ("Checkpoint and config"); the dry run reads the checkpoint; a run logs the shapes."""

from __future__ import annotations

import pytest
import torch

from wmtp.checkpoint import ModelIdentityError, save_meta_checkpoint
from wmtp.cli import main
from wmtp.config.loader import load_config
from wmtp.model.args import PRESETS
from wmtp.model.transformer import build_model
from wmtp.parallel.build import build_policy, policy_args


@pytest.fixture
def meta_4_heads(tmp_path):
    """A micro Meta-format checkpoint with 4 heads (2 trunk blocks + head 1 + 3 extra heads)."""
    args = PRESETS["tiny"].replace(n_layers=6, n_future_tokens=4)
    model = build_model(args, seed=3)
    return model, save_meta_checkpoint(model, tmp_path / "meta4", n_shards=2)


def _cfg(folder, *overrides):
    return load_config(overrides=[f"model.checkpoint={folder}", "data.max_seq_len=32", *overrides])


def _logits(model, tokens):
    return model(tokens, return_logits=True).logits


TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))


def test_fewer_heads_drop_the_extra_heads(meta_4_heads):
    model, folder = meta_4_heads
    cfg = _cfg(folder, "model.n_future_tokens=1")
    args = policy_args(cfg)
    assert (args.n_future_tokens, args.n_layers, args.n_trunk_layers) == (1, 3, 3)
    policy = build_policy(cfg, None, torch.device("cpu"))
    assert policy.n_future_heads == 1 and len(policy.extra_heads) == 0
    # Head 1 is untouched: its logits equal the 4-head model's head 1.
    assert torch.equal(_logits(policy, TOKENS)[:, :, 0], _logits(model, TOKENS)[:, :, 0])

    two = build_policy(_cfg(folder, "model.n_future_tokens=2"), None, torch.device("cpu"))
    assert torch.equal(_logits(two, TOKENS), _logits(model, TOKENS)[:, :, :2])


def test_more_heads_start_from_the_last_trunk_block(meta_4_heads):
    model, folder = meta_4_heads
    policy = build_policy(_cfg(folder, "model.n_future_tokens=6"), None, torch.device("cpu"))
    assert policy.n_future_heads == 6 and policy.args.n_layers == 8 and policy.args.n_trunk_layers == 3
    logits, ref = _logits(policy, TOKENS), _logits(model, TOKENS)
    assert torch.equal(logits[:, :, :4], ref)
    # Heads 5 and 6 are copies of head 1 (the last trunk block): same logits, separate tensors.
    assert torch.equal(logits[:, :, 4], ref[:, :, 0]) and torch.equal(logits[:, :, 5], ref[:, :, 0])
    assert policy.extra_heads[3].attention.wq.weight.data_ptr() != policy.layers[-1].attention.wq.weight.data_ptr()


def test_no_override_loads_the_checkpoint_as_it_is(meta_4_heads):
    model, folder = meta_4_heads
    cfg = _cfg(folder, "model.preset=micro")  # the preset does not shape a checkpointed model
    assert policy_args(cfg) == model.args.replace(max_seq_len=2048)
    assert policy_args(_cfg(folder, "model.params.max_seq_len=128")).max_seq_len == 128


@pytest.mark.parametrize("override, message", [
    ("model.params.dim=64", r"dim: config 64, checkpoint 32"),
    ("model.params.n_layers=4", r"n_layers: config 4, checkpoint 6 \(3 trunk blocks \+ 3 extra heads = 6\)"),
    ("model.params.rope_theta=500000.0", r"rope_theta: config 500000.0, checkpoint 10000.0"),
])
def test_other_shape_conflicts_are_named_errors(meta_4_heads, override, message):
    _, folder = meta_4_heads
    with pytest.raises(ModelIdentityError, match=message):
        policy_args(_cfg(folder, override))


def test_both_values_of_every_conflict_are_listed(meta_4_heads):
    _, folder = meta_4_heads
    with pytest.raises(ModelIdentityError, match=r"dim: config 64, checkpoint 32; vocab_size: config 99, "
                                                 r"checkpoint 64"):
        policy_args(_cfg(folder, "model.params.dim=64", "model.params.vocab_size=99"))


def test_dry_run_reads_the_checkpoint(meta_4_heads, capsys):
    _, folder = meta_4_heads
    code = main(["--dry-run", "--local", f"model.checkpoint={folder}", "model.n_future_tokens=2",
                 "data.max_seq_len=32"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"policy shapes from params.json of {folder}: dim=32 n_layers=4 (trunk 2 + 2 head(s))" in out
    assert "#   head 2:" in out and "#   head 3:" not in out

    code = main(["--dry-run", "--local", f"model.checkpoint={folder}", "model.params.dim=64"])
    err = capsys.readouterr().err
    assert code == 2 and "dim: config 64, checkpoint 32" in err and "Traceback" not in err


def test_the_run_logs_the_final_shapes(meta_4_heads, capsys):
    _, folder = meta_4_heads
    build_policy(_cfg(folder, "model.n_future_tokens=1"), None, torch.device("cpu"))
    assert (f"[wmtp] policy from {folder}: dim=32 n_layers=3 (trunk 2 + 1 head(s))"
            in capsys.readouterr().out)
