"""The trained model written out for the next stage and for `wmtp eval`: gathered one tensor at
a time onto rank 0's host (`wmtp.parallel.gather`), saved as safetensors + params.json (plus the
Meta and HF hand-off formats asked for) with the tokenizer it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch.distributed as dist
from torch import Tensor, nn

from wmtp.config.paths import export_dir
from wmtp.config.schema import WMTPConfig
from wmtp.model.transformer import Transformer, build_model
from wmtp.model.value import ValueModel
from wmtp.parallel.gather import gather_state_dict
from wmtp.parallel.reduce import DistEnv


def export_model(model: nn.Module, cfg: WMTPConfig, layout: DistEnv, tokenizer=None,
                 value_head: str | None = None, out: Path | None = None) -> Path:
    """Write the trained model to `<run_dir>/export` (or `out`) (safetensors + params.json, plus the
    tokenizer.model it was trained with, so `wmtp eval --checkpoint <export>` and the next stage
    need nothing else), rank 0 only.

    Every rank takes part in gathering FSDP shards, one tensor at a time straight to rank 0's host
    memory (`wmtp.parallel.gather`: no whole model on a GPU); the files appear atomically (tmp +
    rename)."""
    import shutil

    from wmtp.checkpoint import save_model, save_value_model

    # One tensor at a time onto rank 0's host (the others take part in the gathers).
    state = gather_state_dict(model, keep=layout.is_main)
    out = out if out is not None else export_dir(cfg)
    if layout.is_main:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        assert state is not None  # kept on the main rank
        replica = unwrap_replica(model, state)
        if value_head is not None:
            save_value_model(cast(ValueModel, replica), tmp)
        else:
            save_model(cast(Transformer, replica), tmp)
            export_handoff_formats(cast(Transformer, replica), tmp, cfg.train.export_formats)
        if tokenizer is not None:
            shutil.copyfile(tokenizer.path, tmp / "tokenizer.model")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    if layout.distributed:
        dist.barrier()
    return out


def export_handoff_formats(model: Transformer, folder: Path, formats: Sequence[str]) -> None:
    """`folder/meta` (Meta's params.json + consolidated.00.pth) and `folder/hf` (HF LLaMA
    safetensors + config.json of head 1: the inverse of the HF import) for a plain (unsharded)
    policy; tensors are converted one at a time (`wmtp.checkpoint.save_hf_llama`)."""
    from wmtp.checkpoint import save_hf_llama, save_meta_checkpoint
    from wmtp.parallel.gather import iter_full_tensors

    if "meta" in formats:
        save_meta_checkpoint(model, folder / "meta")
    if "hf" in formats:
        save_hf_llama(iter_full_tensors(model), model.args, folder / "hf")


def unwrap_replica(model: nn.Module, state: dict[str, Tensor]) -> Transformer | ValueModel:
    """A plain (unsharded, CPU) copy of `model` (a Transformer or ValueModel) holding `state`, for saving."""
    from wmtp.model.value import build_value_model

    replica: Transformer | ValueModel
    if isinstance(model, ValueModel):
        replica = build_value_model(model.args, model.value_head.kind, device="cpu", seed=None)
    else:
        replica = build_model(cast(Transformer, model).args, device="cpu", seed=None)
    replica.load_state_dict(state)
    return replica
