"""The model files a checkpoint folder holds: wmtp's safetensors, Meta's `consolidated*.pth`, HF LLaMA.

Formats a folder may hold (checked in this order, see docs/MODEL.md):

| format | files | written by |
|---|---|---|
| wmtp | `params.json` + `model.safetensors` (+ `value.json` for critics) | `save_model`, `save_value_model` |
| Meta | `params.json` + `consolidated.00.pth` [.. `consolidated.NN.pth`] | Meta's releases (7B_1T_4), `save_meta_checkpoint` |
| HF LLaMA | `config.json` + `*.safetensors` | `transformers` (import only) |

Every reader returns the model in Meta's key layout and checks the state dict against the model
the params describe: a missing, unknown or mis-shaped key is a `CheckpointError` naming it.
Local folders only; `s3://` URIs are pulled by `wmtp.storage` first. Loading a model (shapes
reconciled with the config, heads adapted, weights placed) is `wmtp.checkpoint.load`.
"""
# One module (over 300 lines): the checkpoint formats (Meta, safetensors, HF) share their key maps and shape checks; split by format they would import each other.

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wmtp.errors import WMTPUserError
from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer
from wmtp.model.value import ValueModel

PARAMS_FILE = "params.json"
WEIGHTS_FILE = "model.safetensors"
VALUE_FILE = "value.json"

# Keys Meta's params.json may carry that only configure Meta's runtime, not the weights.
_META_RUNTIME_KEYS = frozenset({"max_batch_size"})
# Buffers some Meta checkpoints (LLaMA 1/2) store; wmtp recomputes RoPE from `rope_theta`.
_IGNORED_KEYS = frozenset({"rope.freqs"})

# Meta's model-parallel layout (fairscale): ColumnParallelLinear weights are split along the
# output features (dim 0), RowParallelLinear along the input features (dim 1); norms are
# replicated. The embedding is split along `dim` (LLaMA 1/2 `ParallelEmbedding`, dim 1) or along
# the vocabulary (LLaMA 3 `VocabParallelEmbedding`, dim 0): resolved from the expected shape.
_SHARD_DIM: list[tuple[str, int | None]] = [
    (r"attention\.w[qkv]\.weight$", 0),
    (r"feed_forward\.w[13]\.weight$", 0),
    (r"^output\.weight$", 0),
    (r"attention\.wo\.weight$", 1),
    (r"feed_forward\.w2\.weight$", 1),
    (r"norm\.weight$", None),
    (r"^tok_embeddings\.weight$", -1),  # -1: whichever of dim 1 / dim 0 gives the expected shape
]


class CheckpointError(WMTPUserError, ValueError):
    """A checkpoint folder that cannot be read: names the path, the key and the shapes."""


# ---------------------------------------------------------------- reading and writing whole folders


def read_checkpoint(path: str | Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    """(args, state dict in Meta's key layout) from any supported folder, unchecked against a model."""
    folder = checkpoint_folder(path)
    if (folder / PARAMS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return _read_params(folder), read_safetensors(folder / WEIGHTS_FILE)
    shards = sorted(folder.glob("consolidated*.pth"))
    if (folder / PARAMS_FILE).is_file() and shards:
        return _read_meta(folder, shards)
    if (folder / "config.json").is_file() and list(folder.glob("*.safetensors")):
        return _read_hf_llama(folder)
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise CheckpointError(
        f"no checkpoint in {folder}: expected params.json + model.safetensors (wmtp), params.json + "
        f"consolidated*.pth (Meta) or config.json + *.safetensors (HF LLaMA); found {present}"
    )


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write `params.json` + `model.safetensors` of an unsharded model (`wmtp.parallel.export`
    gathers a sharded one onto rank 0 first)."""
    model = _unwrap(model)
    if not isinstance(model, Transformer):
        raise TypeError(f"save_model expects a Transformer, got {type(model).__name__} (use save_value_model)")
    state = _full_state_dict(model)
    return _write(path, model.args, state, extra=None)


def save_value_model(model: nn.Module, path: str | Path, head: str | None = None) -> Path:
    """Write a critic: `params.json` (backbone shapes) + `value.json` (`{"head": kind}`) + weights."""
    model = _unwrap(model)
    if not isinstance(model, ValueModel):
        raise TypeError(f"save_value_model expects a ValueModel, got {type(model).__name__}")
    kind = model.value_head.kind
    if head is not None and head != kind:
        raise CheckpointError(f"save_value_model: head={head!r} but the model's value head is {kind!r}")
    return _write(path, model.args, _full_state_dict(model), extra={"head": kind})


def read_value_args(path: str | Path) -> tuple[ModelArgs, str]:
    """(backbone shapes, value head kind) of a critic folder, without reading its weights."""
    folder = checkpoint_folder(path)
    value_file = folder / VALUE_FILE
    if not value_file.is_file():
        raise CheckpointError(f"{value_file} not found: {folder} is not a value-model checkpoint "
                              f"(written by save_value_model)")
    meta = _read_json(value_file)
    if "head" not in meta:
        raise CheckpointError(f"{value_file}: missing key 'head' (allowed values: 'linear', 'mlp')")
    args = _read_params(folder)
    try:
        with torch.device("meta"):
            ValueModel(args, head=meta["head"])
    except ValueError as e:
        raise CheckpointError(f"{value_file}: {e}") from None
    return args, meta["head"]


def save_meta_checkpoint(model: nn.Module, path: str | Path, n_shards: int = 1,
                         dtype: torch.dtype | None = None) -> Path:
    """Write the model as Meta ships it: `params.json` (Meta's keys only) + `consolidated.NN.pth`
    model-parallel shards (split as `_SHARD_DIM` says; embedding along dim 1 as LLaMA 2 does)."""
    model = _unwrap(model)
    if not isinstance(model, Transformer):
        raise TypeError(f"save_meta_checkpoint expects a Transformer, got {type(model).__name__}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = _full_state_dict(model)
    shards: list[dict[str, Tensor]] = [{} for _ in range(n_shards)]
    for key, tensor in state.items():
        tensor = tensor.to(dtype) if dtype is not None else tensor
        dim = _shard_dim(key)
        dim = 1 if dim == -1 else dim
        parts = [tensor] * n_shards if dim is None else list(tensor.chunk(n_shards, dim=dim))
        if len(parts) != n_shards or (dim is not None and tensor.shape[dim] % n_shards):
            raise CheckpointError(f"{key}: shape {tuple(tensor.shape)} does not split into {n_shards} shards")
        for shard, part in zip(shards, parts, strict=True):
            shard[key] = part.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    params = {k: v for k, v in model.args.to_params_json().items() if k != "max_seq_len"}
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- shapes without weights


def read_checkpoint_args(path: str | Path) -> ModelArgs:
    """The shapes a checkpoint folder holds, without reading its weights (the dry run's view).

    Meta's `"vocab_size": -1` is resolved from the shape of `output.weight` (memory-mapped)."""
    folder = checkpoint_folder(path)
    if (folder / PARAMS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return _read_params(folder)
    shards = sorted(folder.glob("consolidated*.pth"))
    if (folder / PARAMS_FILE).is_file() and shards:
        vocab = _read_json(folder / PARAMS_FILE).get("vocab_size")
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
            return _read_params(folder)
        heads = [_torch_load(f).get("output.weight") for f in shards]
        return _read_params(folder, vocab_size=sum(h.shape[0] for h in heads if h is not None) or None)
    if (folder / "config.json").is_file() and list(folder.glob("*.safetensors")):
        return _hf_args(_read_json(folder / "config.json"), folder / "config.json")
    return read_checkpoint(folder)[0]  # raises the "no checkpoint" error


# ---------------------------------------------------------------- readers


def checkpoint_folder(path: str | Path) -> Path:
    """`path` as a local checkpoint folder that exists (a `CheckpointError` naming it otherwise)."""
    text = str(path)
    if "://" in text:
        raise CheckpointError(f"{text}: remote URIs are pulled to a local folder by wmtp.storage first; "
                              f"pass that folder")
    folder = Path(text).expanduser()
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint path is not a folder: {folder}")
    return folder


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_params(folder: Path, vocab_size: int | None = None) -> ModelArgs:
    file = folder / PARAMS_FILE
    params = {k: v for k, v in _read_json(file).items() if k not in _META_RUNTIME_KEYS}
    from wmtp.model.args import check_param_types

    try:  # a field of the wrong type is named before any arithmetic trips over it
        check_param_types(params)
    except ValueError as e:
        raise CheckpointError(f"{file}: {e}") from None
    # LLaMA 1/2 ship `"vocab_size": -1` (taken from the tokenizer at run time): use the weights'.
    if "vocab_size" not in params or params["vocab_size"] <= 0:
        if vocab_size is not None:
            params["vocab_size"] = vocab_size
        elif "vocab_size" in params:
            raise CheckpointError(f"{file}: vocab_size is {params['vocab_size']} and the weights do not say")
    try:
        return ModelArgs.from_params_json(params)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def read_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from None


def _torch_load(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file; say which
        raise CheckpointError(f"{file}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a state dict, got {type(state).__name__}")
    return state


def _shard_dim(key: str) -> int | None:
    for pattern, dim in _SHARD_DIM:
        if re.search(pattern, key):
            return dim
    raise CheckpointError(f"unknown key {key!r}: not part of Meta's LLaMA-MTP layout")


def _read_meta(folder: Path, shard_files: list[Path]) -> tuple[ModelArgs, dict[str, Tensor]]:
    shards = [_torch_load(f) for f in shard_files]
    keys = [k for k in shards[0] if k not in _IGNORED_KEYS]
    for f, shard in zip(shard_files[1:], shards[1:], strict=True):
        missing = sorted(set(keys) - set(shard))
        if missing:
            raise CheckpointError(f"{f}: missing key {missing[0]!r} present in {shard_files[0].name}")
    vocab = None
    if "output.weight" in shards[0]:
        vocab = sum(s["output.weight"].shape[0] for s in shards)
    args = _read_params(folder, vocab_size=vocab)
    expected = _expected_shapes(args, Transformer)
    state: dict[str, Tensor] = {}
    for key in keys:
        parts = [s[key] for s in shards]
        dim = _shard_dim(key)
        if dim is None or len(parts) == 1:
            state[key] = parts[0]
            continue
        if dim == -1:
            dim = _embedding_dim(key, parts, expected.get(key), folder)
        state[key] = torch.cat(parts, dim=dim)
    return args, state


def _embedding_dim(key: str, parts: list[Tensor], expected: torch.Size | None, folder: Path) -> int:
    for dim in (1, 0):
        shape = list(parts[0].shape)
        shape[dim] = sum(p.shape[dim] for p in parts)
        if expected is not None and tuple(shape) == tuple(expected):
            return dim
    raise CheckpointError(f"{folder}: {key}: shards of shape {tuple(parts[0].shape)} do not concatenate to "
                          f"the expected {tuple(expected) if expected is not None else '?'} along dim 1 or 0")


# HF LLaMA (`transformers` LlamaForCausalLM) key names → Meta's.
_HF_KEYS: list[tuple[str, str]] = [
    (r"^model\.embed_tokens\.weight$", "tok_embeddings.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.weight$", r"layers.\1.attention.wq.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj\.weight$", r"layers.\1.attention.wk.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj\.weight$", r"layers.\1.attention.wv.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"layers.\1.attention.wo.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", r"layers.\1.feed_forward.w1.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$", r"layers.\1.feed_forward.w2.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$", r"layers.\1.feed_forward.w3.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attention_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.ffn_norm.weight"),
]
_HF_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def hf_unpermute(w: Tensor, n_heads: int) -> Tensor:
    """Undo HF's RoPE permutation of q/k rows (`[n*hd, D]`): HF rotates halves (x_i, x_{i+hd/2}),
    Meta interleaved pairs (x_{2i}, x_{2i+1}); HF's converter permuted rows to switch."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _hf_rope_theta(cfg: dict[str, Any], cfg_file: Path) -> float:
    """RoPE base of an HF config: `rope_parameters.rope_theta` (transformers ≥ 4.5x/5 write it
    there), else the legacy top-level `rope_theta`. Only `rope_type: default` is supported:
    scaled variants (`llama3`, `linear`, `dynamic`, `yarn`, ...) change the frequencies, and
    loading them unscaled would silently give wrong logits, so they are refused by name."""
    rope = cfg.get("rope_parameters")
    legacy = cfg.get("rope_scaling")
    if rope is not None and not isinstance(rope, dict):
        raise CheckpointError(f"{cfg_file}: rope_parameters must be an object, got {type(rope).__name__}")
    if legacy is not None and not isinstance(legacy, dict):
        raise CheckpointError(f"{cfg_file}: rope_scaling must be an object or null, got {type(legacy).__name__}")
    for key, section in (("rope_parameters", rope), ("rope_scaling", legacy)):
        if not section:
            continue
        kind = section.get("rope_type", section.get("type", "default"))
        if kind != "default":
            raise CheckpointError(
                f"{cfg_file}: {key}.rope_type={kind!r} is not supported: wmtp's RoPE has no {kind!r} frequency "
                f"scaling and loading it unscaled would give wrong logits (only 'default' is imported)")
        unknown = sorted(set(section) - {"rope_type", "type", "rope_theta"})
        if unknown:
            raise CheckpointError(f"{cfg_file}: {key} has fields wmtp does not implement: {unknown}")
    top = cfg.get("rope_theta")
    inner = (rope or {}).get("rope_theta")
    if top is not None and inner is not None and float(top) != float(inner):
        raise CheckpointError(f"{cfg_file}: rope_theta={top} disagrees with rope_parameters.rope_theta={inner}")
    theta = inner if inner is not None else top if top is not None else 10000.0
    if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
        raise CheckpointError(f"{cfg_file}: rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def _hf_args(cfg: dict[str, Any], cfg_file: Path) -> ModelArgs:
    """ModelArgs from an HF LLaMA `config.json` (NTP: one head). Fields that would change the
    model's function and that wmtp does not implement are refused by name."""
    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if key in cfg and cfg[key] != allowed:
            raise CheckpointError(f"{cfg_file}: {key}={cfg[key]!r} is not supported (wmtp's LLaMA has {allowed!r})")
    try:
        dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if cfg.get("head_dim") not in (None, dim // n_heads):
            raise CheckpointError(f"{cfg_file}: head_dim={cfg['head_dim']} != hidden_size / num_attention_heads = "
                                  f"{dim // n_heads} is not supported")
        hidden = int(2 * 4 * dim / 3)
        inter = cfg["intermediate_size"]
        args = ModelArgs(
            dim=dim, n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or None, vocab_size=cfg["vocab_size"],
            # multiple_of = intermediate_size reproduces it exactly (with a multiplier below 1 when smaller).
            multiple_of=inter, ffn_dim_multiplier=None if inter >= hidden else inter / hidden,
            norm_eps=cfg.get("rms_norm_eps", 1e-5), rope_theta=_hf_rope_theta(cfg, cfg_file),
            n_future_tokens=1, max_seq_len=cfg.get("max_position_embeddings", 2048),
        )
    except KeyError as e:
        raise CheckpointError(f"{cfg_file}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{cfg_file}: {e}") from None
    if args.ffn_hidden_dim != inter:
        raise CheckpointError(f"{cfg_file}: intermediate_size={inter} is not expressible in Meta's FFN rule")
    return args


def _read_hf_llama(folder: Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    cfg_file = folder / "config.json"
    cfg = _read_json(cfg_file)
    args = _hf_args(cfg, cfg_file)
    raw: dict[str, Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        raw.update(read_safetensors(f))
    state: dict[str, Tensor] = {}
    for key in list(raw):  # popped as renamed: an unpermuted q/k below does not sit beside its original
        tensor = raw.pop(key)
        if _HF_IGNORED.search(key):
            continue
        for pattern, repl in _HF_KEYS:
            if re.match(pattern, key):
                state[re.sub(pattern, repl, key)] = tensor
                break
        else:
            raise CheckpointError(f"{folder}: unknown HF LLaMA key {key!r}")
    if "output.weight" not in state and cfg.get("tie_word_embeddings") and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    for key in list(state):
        if key.endswith("attention.wq.weight"):
            state[key] = hf_unpermute(state[key], args.n_heads)
        elif key.endswith("attention.wk.weight"):
            state[key] = hf_unpermute(state[key], args.kv_heads)
    return args, state


# ---------------------------------------------------------------- HF LLaMA export (the inverse of the import)

HF_INDEX_FILE = "model.safetensors.index.json"


def hf_permute(w: Tensor, n_heads: int) -> Tensor:
    """Meta's interleaved-pair q/k rows → HF's half-split rows (transformers' converter; the
    inverse of `hf_unpermute`)."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_config(args: ModelArgs) -> dict[str, Any]:
    """`config.json` of the HF LLaMA equivalent of head 1 (trunk + head 1, `n_future_tokens=1`)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_trunk_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


_META_TO_HF = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
               "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
               "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
               "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
               "ffn_norm": "post_attention_layernorm"}


def hf_key(key: str, args: ModelArgs, tensor: Tensor) -> tuple[str, Tensor] | None:
    """One Meta-layout entry → its HF LLaMA name and tensor (q/k rows permuted); None for the
    extra MTP heads, which a plain LLaMA has no place for (head 1 is `layers[T-1]`)."""
    if key == "tok_embeddings.weight":
        return "model.embed_tokens.weight", tensor
    if key == "norm.weight":
        return "model.norm.weight", tensor
    if key == "output.weight":
        return "lm_head.weight", tensor
    if key.startswith("extra_heads."):
        return None
    m = re.match(r"^layers\.(\d+)\.(.+)\.weight$", key)
    if not m or m[2] not in _META_TO_HF:
        raise CheckpointError(f"unknown key {key!r}: not part of Meta's LLaMA-MTP layout")
    if m[2] == "attention.wq":
        tensor = hf_permute(tensor, args.n_heads)
    elif m[2] == "attention.wk":
        tensor = hf_permute(tensor, args.kv_heads)
    return f"model.layers.{m[1]}.{_META_TO_HF[m[2]]}.weight", tensor


def save_hf_llama(tensors: Iterable[tuple[str, Tensor]], args: ModelArgs, path: str | Path, *, dtype: torch.dtype | None = None,
                  max_shard_bytes: int = 2 << 30, write: bool = True) -> Path:
    """Write head 1 of a Meta-layout model as an HF LLaMA folder: `config.json` + safetensors
    shards (+ `model.safetensors.index.json` when there is more than one). `tensors` is an
    iterable of (Meta key, tensor), e.g. `wmtp.parallel.gather.iter_full_tensors(model)`: each is
    converted and buffered until a shard reaches `max_shard_bytes`, so host memory stays at one shard plus one
    tensor. `write=False` (other ranks of a sharded model) consumes the iterable and writes
    nothing. An MTP model's extra heads are dropped: the result is the NTP model of head 1.
    `load_model` (and transformers' LlamaForCausalLM) read it back with the same head-1 logits."""
    from safetensors.torch import save_file

    folder = Path(path)
    shard: dict[str, Tensor] = {}
    size = 0
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush() -> None:
        nonlocal shard, size
        if shard and write:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    if write:
        folder.mkdir(parents=True, exist_ok=True)
    for key, tensor in tensors:
        converted = hf_key(key, args, tensor)
        if converted is None or not write:
            continue
        name, t = converted
        t = (t.to(dtype) if dtype is not None else t).contiguous().clone()
        if size and size + t.numel() * t.element_size() > max_shard_bytes:
            flush()
        shard[name] = t
        size += t.numel() * t.element_size()
    flush()
    if not write:
        return folder
    if len(files) == 1:
        os.replace(folder / files[0], folder / "model.safetensors")
    else:
        for i, name in enumerate(files):
            final = name.replace(f"{i + 1:05d}.safetensors", f"{i + 1:05d}-of-{len(files):05d}.safetensors")
            os.replace(folder / name, folder / final)
            weight_map = {k: (final if v == name else v) for k, v in weight_map.items()}
        (folder / HF_INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1) + "\n")
    config = hf_config(args)
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- checking and materialising


def _expected_shapes(args: ModelArgs, cls: type[nn.Module]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = cls(args)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """Raise `CheckpointError` naming the first missing, unknown or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unknown = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]!r}{more}")
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise CheckpointError(f"{source}: unknown key {unknown[0]!r}{more}; the model's params do not have it")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key}: checkpoint shape {tuple(tensor.shape)} != model shape "
                                  f"{tuple(expected[key].shape)}")


# ---------------------------------------------------------------- writing


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps in OptimizedModule; its state-dict keys gain `_orig_mod.`.
    return getattr(model, "_orig_mod", model)


def _full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """CPU tensors of an unsharded model (a sharded one is gathered first, one tensor at a time, by
    `wmtp.parallel.export.export_model`)."""
    return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}


def _write(path: str | Path, args: ModelArgs, state: dict[str, Tensor], extra: dict[str, Any] | None) -> Path:
    from safetensors.torch import save_file

    folder = Path(path)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared/non-contiguous storage: give every tensor its own buffer.
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": "pt"})
    (folder / PARAMS_FILE).write_text(json.dumps(args.to_params_json(), indent=2) + "\n")
    if extra is not None:
        (folder / VALUE_FILE).write_text(json.dumps(extra, indent=2) + "\n")
    return folder


__all__ = [
    "HF_INDEX_FILE", "PARAMS_FILE", "VALUE_FILE", "WEIGHTS_FILE", "CheckpointError", "check_state_dict",
    "checkpoint_folder", "hf_config", "hf_key", "hf_permute", "hf_unpermute", "read_checkpoint",
    "read_checkpoint_args", "read_safetensors", "read_value_args", "save_hf_llama", "save_meta_checkpoint", "save_model",
    "save_value_model",
]
