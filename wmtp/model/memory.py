"""A run's memory, the model layer; the same concept as wmtp.trace.memory, computed by formula.

Analytic size, FLOPs and per-GPU memory of a LLaMA-MTP model (the dry run's plan).

Every formula is written beside its code and explained with the 7b-mtp4 / 4×A100 numbers in
docs/MEMORY.md. `count_parameters` equals the real module's count (tested), so the estimate's
parameter term is exact; the activation term is a model of what autograd saves (±15%).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wmtp.model.args import ModelArgs

GIB = 1024**3

# Bytes of optimizer state per parameter (fp32 states).
OPTIMIZER_STATE_BYTES: dict[str, int] = {
    "adamw": 8,  # exp_avg + exp_avg_sq
    "adam": 8,
    "sgd": 4,  # momentum buffer
}
# Compute dtype bytes per precision setting; master weights, grads and optimizer stay fp32.
COMPUTE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2}
MASTER_BYTES = 4


def block_parameters(args: ModelArgs) -> int:
    """One transformer block: wq, wo `[n·hd, D]`, wk, wv `[kv·hd, D]`, w1, w3 `[F, D]`, w2 `[D, F]`, 2 norms."""
    D, F = args.dim, args.ffn_hidden_dim
    attn = 2 * D * args.n_heads * args.head_dim + 2 * D * args.kv_heads * args.head_dim
    return attn + 3 * D * F + 2 * D


def value_head_parameters(dim: int, head: str) -> int:
    table = {"linear": dim + 1, "mlp": dim * (dim // 2) + dim // 2 + dim // 2 + 1}
    if head not in table:
        raise ValueError(f"unknown value head {head!r}; allowed: {sorted(table)}")
    return table[head]


def count_parameters(args: ModelArgs, *, with_output: bool = True, value_head: str | None = None) -> int:
    """All parameters: `n_layers` blocks (trunk + heads) + embedding `[V, D]` + final norm
    (+ output `[V, D]`; + a value head for critics, which have no output)."""
    n = args.n_layers * block_parameters(args) + args.vocab_size * args.dim + args.dim
    if with_output and value_head is None:
        n += args.vocab_size * args.dim
    if value_head is not None:
        n += value_head_parameters(args.dim, value_head)
    return n


def flops_per_token(args: ModelArgs, seq_len: int, *, training: bool = True) -> float:
    """Matmul FLOPs per token of a training step (forward + backward), PaLM-appendix convention.

    `6·N_mm + 12·L·(n_heads·hd)·S`, where N_mm counts each matmul weight as often as it is applied
    per token: every block once (trunk and heads, so `L = n_layers`) and the shared output
    projection once per head (`H·V·D`). The embedding lookup is not a matmul. The attention term
    (QKᵀ and AV, 2·2·S·d each forward, ×3 with backward) ignores the causal half, as MFU
    conventions do. `training=False` gives the forward only (a third).
    """
    n_mm = args.n_layers * (block_parameters(args) - 2 * args.dim) + args.n_future_tokens * args.vocab_size * args.dim
    flops = 6 * n_mm + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
    return flops if training else flops / 3


def activation_elements_per_token(args: ModelArgs) -> int:
    """Elements autograd keeps per token for one block (fused SDPA: no S×S scores).

    Each RMSNorm keeps its input, x·rsqrt and the weighted output (3D). Attention: q (D), k and v
    (kv·hd each), the attention output, also wo's input (D) → 3D + 2D + 2·kv·hd. FFN: w1 out,
    w3 out, silu(w1), their product (w2's input): 4F. Total 8D + 2·kv·hd + 4F; measured saved
    tensors of the fp32 model agree within 5% (tests/model/test_memory.py).
    """
    D, F = args.dim, args.ffn_hidden_dim
    return 8 * D + 2 * args.kv_heads * args.head_dim + 4 * F


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU. `total` = params + grads + optimizer + activations + transient."""

    n_params: int
    params: int
    grads: int
    optimizer: int
    activations: int
    transient: int
    formulas: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.transient

    def summary(self) -> str:
        """One line per term, in GiB, with its formula."""
        rows = [("params", self.params), ("grads", self.grads), ("optimizer", self.optimizer),
                ("activations", self.activations), ("transient", self.transient), ("total", self.total)]
        return "\n".join(f"{name:<12} {value / GIB:8.2f} GiB   {self.formulas.get(name, '')}".rstrip()
                         for name, value in rows)


def estimate_memory(args: ModelArgs, *, world_size: int, precision: str, fsdp: bool, batch_size: int,
                    seq_len: int, activation_checkpointing: bool, optimizer: str = "adamw",
                    value_head: str | None = None, loss_chunk_size: int = 1024) -> MemoryEstimate:
    """Per-GPU memory of one training step (policy; a critic with `value_head`).

    batch_size: sequences per micro-batch per GPU. precision: "fp32" or "bf16" (bf16 compute,
    fp32 master weights, grads, optimizer). fsdp: FSDP2 full shard over `world_size` ranks (per
    block units, root last); otherwise every rank holds a full replica. Excludes the CUDA context
    and allocator fragmentation (budget 1–3 GiB).
    """
    if precision not in COMPUTE_BYTES:
        raise ValueError(f"unknown precision {precision!r}; allowed: {sorted(COMPUTE_BYTES)}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {sorted(OPTIMIZER_STATE_BYTES)}")
    if world_size < 1 or batch_size < 1 or seq_len < 1:
        raise ValueError("world_size, batch_size and seq_len must be >= 1")
    n = count_parameters(args, value_head=value_head)
    shard = world_size if fsdp else 1
    c = COMPUTE_BYTES[precision]
    opt = OPTIMIZER_STATE_BYTES[optimizer]
    params = MASTER_BYTES * n // shard
    grads = MASTER_BYTES * n // shard
    optim = opt * n // shard

    tokens = batch_size * seq_len
    per_block = activation_elements_per_token(args) * c
    L, D, V = args.n_layers, args.dim, args.vocab_size
    heads = 1 if value_head is not None else args.n_future_tokens
    if activation_checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time.
        blocks = tokens * (L * D * c + per_block)
        block_formula = f"B·S·(L·D·{c} + a·{c})"
    else:
        blocks = tokens * L * per_block
        block_formula = f"B·S·L·a·{c}"
    # Embedding output (D) + the H normed head outputs kept for the chunked loss (H·D).
    outputs = tokens * (1 + heads) * D * c
    activations = blocks + outputs

    # Loss chunk: fp32 logits and their gradient for `loss_chunk_size` tokens of one head.
    loss_chunk = 0 if value_head is not None else 2 * 4 * min(tokens, loss_chunk_size) * V
    gathered = 0
    if fsdp and world_size > 1:
        # FSDP2 all-gathers a unit's params in the compute dtype: the current and the prefetched
        # block, plus the root unit (embedding, norm, output) held through the forward. In
        # backward one block's unsharded gradient (compute dtype) and its fp32 reduce-scatter
        # input are alive beside them (measured by the trace: docs/MEMORY.md).
        root = n - L * block_parameters(args)
        block = block_parameters(args)
        gathered = (2 * block + root) * c + block * (c + (MASTER_BYTES if c != MASTER_BYTES else 0))
    elif precision == "bf16":
        gathered = n * c  # autocast's bf16 copies of the weights
    transient = loss_chunk + gathered
    if fsdp and world_size > 1:
        rs = f"{c}+4" if c != MASTER_BYTES else f"{c}"
        gather_formula = f"(2·block + root)·{c} (FSDP2 gathers) + block·({rs}) (block grads, reduce-scatter)"
    elif precision == "bf16":
        gather_formula = f"N·{c} (autocast weight copies)"
    else:
        gather_formula = "0 (no copies)"
    a = activation_elements_per_token(args)
    formulas = {
        "params": f"{MASTER_BYTES}·N/{shard}  (N={n:,}, fp32 master)",
        "grads": f"{MASTER_BYTES}·N/{shard}  (fp32, reduce-scattered)",
        "optimizer": f"{opt}·N/{shard}  ({optimizer})",
        "activations": f"{block_formula} + B·S·(1+H)·D·{c}  (a={a} elements/token/block, L={L}, H={heads})",
        "transient": f"2·4·chunk·V (loss chunk) + {gather_formula}",
    }
    return MemoryEstimate(n_params=n, params=params, grads=grads, optimizer=optim, activations=activations,
                          transient=transient, formulas=formulas)


__all__ = [
    "COMPUTE_BYTES", "GIB", "MemoryEstimate", "OPTIMIZER_STATE_BYTES", "activation_elements_per_token",
    "block_parameters", "count_parameters", "estimate_memory", "flops_per_token", "value_head_parameters",
]
