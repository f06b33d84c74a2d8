"""LLaMA transformer with Meta's multi-token-prediction heads (Meta's key names and layout).

Layout (docs/MODEL.md): `tok_embeddings` → `layers[0..T-2]` (the shared trunk) → heads. Head 1 is
`layers[T-1]`, heads 2..H are `extra_heads[0..H-2]`; every head is one transformer block fed the
trunk output, then the shared `norm` and `output`. Head k at position t predicts token t+k.

This file says *what* the model is; FSDP2 and activation checkpointing are applied from
outside (`wmtp/parallel/`).
"""
# One module (over 300 lines): the model as Meta's reference lays it out (blocks, heads, RoPE, KV cache side by side), compared with that code.

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmtp.model.args import ModelArgs

_M = TypeVar("_M", bound=nn.Module)


@dataclass
class MTPOutput:
    """What `Transformer.forward` returns.

    hidden: one `[B, S, D]` tensor per computed head, after the shared final norm; entry k-1 is
        head k, which at position t predicts token t+k.
    logits: `[B, S, H, V]` float32, only when `return_logits=True` (generation, tests). Training
        never asks for it: the loss projects one head and one sequence chunk at a time.
    """

    hidden: list[Tensor]
    logits: Tensor | None = None


class KVCache:
    """Keys/values of every block (trunk and heads) for incremental decoding.

    k[i], v[i]: `[B, max_seq_len, n_kv_heads, head_dim]` for block i in `Transformer.blocks()` order.
    `key_padding_mask`: optional `[B, max_seq_len]` bool, True for real tokens (left padding).
    """

    def __init__(self, args: ModelArgs, batch_size: int, max_seq_len: int, n_blocks: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch_size, max_seq_len, args.kv_heads, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_blocks)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_blocks)]
        self.max_seq_len = max_seq_len
        self.key_padding_mask: Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin: `[max_seq_len, head_dim // 2]` (Meta's `precompute_freqs_cis`, as real tables)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    t = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(t, freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[..., 2i], x[..., 2i+1]) as Meta's complex multiply does.

    x: `[B, S, n, head_dim]`; cos, sin: `[S, head_dim // 2]`.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: int = 0,
                cache: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        """x: `[B, S, D]`; mask: `[B, 1, S, S_kv]` bool (True = attend) or None for plain causal."""
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, S, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, S, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:B, start_pos:start_pos + S] = k
            cache_v[:B, start_pos:start_pos + S] = v
            k, v = cache_k[:B, :start_pos + S], cache_v[:B, :start_pos + S]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and S > 1,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        projected: Tensor = self.wo(out.transpose(1, 2).reshape(B, S, -1))
        return projected


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return out


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: int = 0,
                cache: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        h: Tensor = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache, mask)
        out: Tensor = h + self.feed_forward(self.ffn_norm(h))
        return out


class Transformer(nn.Module):
    """LLaMA-MTP. `n_future_tokens=1` is plain LLaMA (no `extra_heads` entries).

    with_output=False drops the vocabulary projection (value-model backbones).
    """

    rope_cos: Tensor  # buffers (registered in __init__)
    rope_sin: Tensor

    def __init__(self, args: ModelArgs, with_output: bool = True) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_trunk_layers))
        self.extra_heads = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_future_tokens - 1))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False) if with_output else None
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def n_future_heads(self) -> int:
        """How many future-token (MTP) heads; `args.n_heads` is the attention heads."""
        return self.args.n_future_tokens

    def blocks(self) -> list[TransformerBlock]:
        """Every block in cache order: trunk layers, then extra heads."""
        return [*self.layers, *self.extra_heads]

    def head_blocks(self) -> list[TransformerBlock]:
        """Prediction heads 1..H (head 1 is the last trunk layer)."""
        return [self.layers[-1], *self.extra_heads]

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Deterministic under `torch.manual_seed`; also rebuilds RoPE tables (after `to_empty`)."""
        for name, p in self.named_parameters():
            self.init_parameter(name, p, std)
        self.init_rope()

    @torch.no_grad()
    def init_parameter(self, name: str, p: Tensor, std: float = 0.02) -> None:
        """Initialise the tensor of parameter `name` in place (the rule of `init_weights`, one
        parameter: a sharded build initialises each full tensor in turn, `wmtp.parallel.materialize`)."""
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(("wo.weight", "w2.weight")):
            # Scale residual projections by depth (GPT-2 style) so deep stacks start stable.
            p.normal_(0.0, std / math.sqrt(2 * self.args.n_layers))
        else:
            p.normal_(0.0, std)

    @torch.no_grad()
    def init_rope(self) -> None:
        """(Re)compute the float32 RoPE tables in place (after `to_empty` or a dtype cast)."""
        device = self.rope_cos.device
        cos, sin = rope_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=device)
        # Assign rather than copy: a `model.to(bfloat16)` must not leave bf16 angle tables behind.
        self.rope_cos, self.rope_sin = cos, sin

    def _rope(self, start_pos: int, S: int) -> tuple[Tensor, Tensor]:
        """cos, sin `[S, head_dim // 2]` float32 for positions start_pos..start_pos+S-1."""
        cos, sin = self.rope_cos, self.rope_sin
        if cos.dtype != torch.float32:
            # The module was cast (e.g. `.to(torch.bfloat16)`); bf16 angles lose ~1e-2 at long
            # positions, so recompute this slice in float32 instead of using the cast tables.
            angles_cos, angles_sin = rope_tables(self.args.head_dim, start_pos + S, self.args.rope_theta,
                                                 device=cos.device)
            return angles_cos[start_pos:], angles_sin[start_pos:]
        return cos[start_pos:start_pos + S], sin[start_pos:start_pos + S]

    def allocate_cache(self, batch_size: int, max_seq_len: int | None = None,
                       dtype: torch.dtype | None = None) -> KVCache:
        weight = self.tok_embeddings.weight
        return KVCache(self.args, batch_size, max_seq_len or self.args.max_seq_len, len(self.blocks()),
                       weight.device, dtype or weight.dtype)

    def _attention_mask(self, B: int, S: int, start_pos: int, cache: KVCache | None,
                        key_padding_mask: Tensor | None, device: torch.device) -> Tensor | None:
        if cache is not None and cache.key_padding_mask is not None:
            key_padding_mask = cache.key_padding_mask
        if key_padding_mask is None and start_pos == 0:
            return None  # plain causal: SDPA's fused path
        total = start_pos + S
        q_pos = torch.arange(start_pos, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        allowed = (k_pos <= q_pos)[None, None]  # [1, 1, S, total]
        if key_padding_mask is not None:
            # Padded keys are hidden; a padded query still sees itself so no row is empty.
            valid = key_padding_mask[:, None, None, :total].to(device)
            allowed = allowed & (valid | (k_pos == q_pos)[None, None])
        return allowed.expand(B, 1, S, total)

    def forward(self, tokens: Tensor, *, start_pos: int = 0, cache: KVCache | None = None,
                n_future_heads: int | None = None, key_padding_mask: Tensor | None = None,
                return_logits: bool = False) -> MTPOutput:
        """tokens: `[B, S]` token ids at positions start_pos..start_pos+S-1.

        n_future_heads: how many prediction heads to run (default all). With a cache, the blocks of the
            heads that are not run keep stale entries for these positions; decode with the same
            n_future_heads throughout (or all heads, as self-speculative decoding does).
        key_padding_mask: `[B, S_total]` bool, True for real tokens (left-padded batches).
        """
        B, S = tokens.shape
        n_heads = n_future_heads or self.n_future_heads
        if not 1 <= n_heads <= self.n_future_heads:
            raise ValueError(f"n_future_heads={n_heads} must be in [1, {self.n_future_heads}]")
        if start_pos + S > self.args.max_seq_len:
            raise ValueError(f"sequence end {start_pos + S} exceeds max_seq_len={self.args.max_seq_len}")
        cos, sin = self._rope(start_pos, S)
        mask = self._attention_mask(B, S, start_pos, cache, key_padding_mask, tokens.device)

        def kv(i: int) -> tuple[Tensor, Tensor] | None:
            return None if cache is None else (cache.k[i], cache.v[i])

        h = self.tok_embeddings(tokens)
        n_trunk = len(self.layers)
        for i, layer in enumerate(self.layers[:-1]):
            h = layer(h, cos, sin, start_pos, kv(i), mask)
        trunk = h
        cache_index = [n_trunk - 1, *range(n_trunk, n_trunk + len(self.extra_heads))]
        hidden = [
            self.norm(block(trunk, cos, sin, start_pos, kv(cache_index[k]), mask))
            for k, block in enumerate(self.head_blocks()[:n_heads])
        ]
        logits = None
        if return_logits:
            if self.output is None:
                raise ValueError("this model has no output projection (value backbone)")
            logits = torch.stack([self.output(x) for x in hidden], dim=2).float()
        return MTPOutput(hidden=hidden, logits=logits)


def allocate_empty(model: _M, device: str | torch.device, dtype: torch.dtype | None = None) -> _M:
    """`model.to_empty(device)` for a freshly meta-built model: every parameter and buffer gets new
    uninitialised storage on `device`. Assigns new tensors instead of swapping them in place, so it
    also works under `FakeTensorMode` (the memory trace), where `to_empty` cannot swap. `dtype`:
    parameters in that dtype (the compute dtype of a frozen scoring copy), else as built."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(torch.empty_like(p, device=device, dtype=dtype or p.dtype),
                                                            requires_grad=p.requires_grad)
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = torch.empty_like(b, device=device)
    return model


def cast_parameters(model: _M, dtype: torch.dtype) -> _M:
    """Every parameter of `model` in `dtype`, frozen (no grad). Assigns new tensors instead of
    swapping them in place (`.to()`), so it also works on meta and under `FakeTensorMode`."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
    return model


def build_model(args: ModelArgs, device: str | torch.device = "cpu", seed: int | None = 0,
                with_output: bool = True) -> Transformer:
    """Build and initialise; `device="meta"` builds shapes only (big models, FSDP)."""
    with torch.device("meta"):
        model = Transformer(args, with_output=with_output)
    if str(device) == "meta":
        return model
    allocate_empty(model, device)
    if seed is not None:
        torch.manual_seed(seed)
    model.init_weights()
    return model
