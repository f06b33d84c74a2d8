"""Checkpoints, one package and this one entry point: callers import from `wmtp.checkpoint`.

| module | what it holds |
|---|---|
| `formats.py` | the model files of a folder: wmtp safetensors, Meta `consolidated*.pth`, HF LLaMA (read and write) |
| `load.py` | a model from a folder: shapes reconciled with the config, heads adapted; `CheckpointReader` |
| `dcp.py` | training checkpoints: DCP shards + per-rank extra state, manifests, verification, their cost |
| `sink.py` | where training checkpoints go on local disk (`LocalCheckpointSink`), published atomically |

Above this package: gathering a sharded model to export it (`wmtp.parallel.export`, which writes
through `save_model`), building models from a reader (`wmtp.parallel.build`), what a resumed run
restores (`wmtp.training.state`), the Ray sink (`wmtp.orchestration.reporting`).
"""

from wmtp.checkpoint.dcp import (
    CheckpointDamaged,
    CheckpointIO,
    checkpoint_io_cost,
    checkpointed_bytes_per_param,
    first_good_checkpoint,
    load_sharded,
    save_sharded,
    saved_world_size,
    verify_sharded,
    write_manifest,
)
from wmtp.checkpoint.formats import (
    PARAMS_FILE,
    VALUE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_checkpoint,
    read_checkpoint_args,
    read_value_args,
    save_hf_llama,
    save_meta_checkpoint,
    save_model,
    save_value_model,
)
from wmtp.checkpoint.load import (
    CHECKPOINT_FILES,
    CheckpointReader,
    ModelIdentityError,
    describe_args,
    load_model,
    load_value_model,
    read_model_state,
    read_value_state,
    reconcile_args,
)
from wmtp.checkpoint.sink import LocalCheckpointSink, checkpoint_step

__all__ = [
    "CHECKPOINT_FILES", "PARAMS_FILE", "VALUE_FILE", "WEIGHTS_FILE", "CheckpointDamaged", "CheckpointError",
    "CheckpointIO", "CheckpointReader", "LocalCheckpointSink", "ModelIdentityError", "checkpoint_io_cost",
    "checkpoint_step", "checkpointed_bytes_per_param", "describe_args", "first_good_checkpoint", "load_model",
    "load_sharded", "load_value_model", "read_checkpoint", "read_checkpoint_args", "read_model_state",
    "read_value_args", "read_value_state", "reconcile_args", "save_hf_llama", "save_meta_checkpoint",
    "save_model", "save_sharded", "save_value_model", "saved_world_size", "verify_sharded", "write_manifest",
]
