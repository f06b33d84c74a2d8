"""The critic, the model layer; the same concept as wmtp.losses.value: its network.

Value model (critic): a separate LLaMA backbone (n_future_tokens=1, no vocab projection) plus
a value head mapping each position's hidden state to a scalar.

`V_j` ≈ P(correct | x_{<=j}) (docs/MATH.md). The head emits an unsquashed scalar: the value losses
regress it onto 0/1 outcomes directly (as PPO critics do); pairwise uses differences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer, allocate_empty


class ValueHead(nn.Module):
    """`linear`: D → 1. `mlp`: D → D/2 → GELU → 1. Keys: `value_head.proj` / `value_head.fc1|fc2`."""

    def __init__(self, dim: int, kind: str = "linear") -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.proj = nn.Linear(dim, 1)
        elif kind == "mlp":
            self.fc1 = nn.Linear(dim, dim // 2)
            self.fc2 = nn.Linear(dim // 2, 1)
        else:
            raise ValueError(f"unknown value head {kind!r}; allowed: ['linear', 'mlp']")

    def forward(self, h: Tensor) -> Tensor:
        v: Tensor = self.proj(h) if self.kind == "linear" else self.fc2(torch.nn.functional.gelu(self.fc1(h)))
        return v.squeeze(-1)


class ValueModel(nn.Module):
    def __init__(self, args: ModelArgs, head: str = "linear") -> None:
        super().__init__()
        if args.n_future_tokens != 1:
            args = args.replace(n_future_tokens=1)
        self.args = args
        self.backbone = Transformer(args, with_output=False)
        self.value_head = ValueHead(args.dim, head)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        self.backbone.init_weights(std)
        for p in self.value_head.parameters():
            p.normal_(0.0, std) if p.dim() > 1 else p.zero_()

    @torch.no_grad()
    def init_parameter(self, name: str, p: Tensor, std: float = 0.02) -> None:
        """`init_weights`' rule for one parameter (in `named_parameters` order, the same RNG draws)."""
        if name.startswith("backbone."):
            self.backbone.init_parameter(name.removeprefix("backbone."), p, std)
        else:
            p.normal_(0.0, std) if p.dim() > 1 else p.zero_()

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """tokens: `[B, S]` → values `[B, S]` (float32)."""
        h = self.backbone(tokens, key_padding_mask=key_padding_mask).hidden[0]
        values: Tensor = self.value_head(h)
        return values.float()

    @torch.no_grad()
    def init_from_policy(self, policy: Transformer) -> None:
        """Copy the policy trunk (embeddings, trunk layers, norm) into the backbone."""
        n = len(self.backbone.layers)
        if n > len(policy.layers):
            raise ValueError(f"value backbone has {n} layers but the policy trunk only {len(policy.layers)}")
        self.backbone.tok_embeddings.load_state_dict(policy.tok_embeddings.state_dict())
        for i in range(n):
            self.backbone.layers[i].load_state_dict(policy.layers[i].state_dict())
        self.backbone.norm.load_state_dict(policy.norm.state_dict())


def value_args_from_policy(policy_args: ModelArgs) -> ModelArgs:
    """A critic backbone as deep as the policy trunk (heads excluded), one output."""
    return policy_args.replace(n_layers=policy_args.n_trunk_layers, n_future_tokens=1)


def build_value_model(args: ModelArgs, head: str = "linear", device: str | torch.device = "cpu",
                      seed: int | None = 0) -> ValueModel:
    with torch.device("meta"):
        model = ValueModel(args, head)
    if str(device) == "meta":
        return model
    allocate_empty(model, device)
    if seed is not None:
        torch.manual_seed(seed)
    model.init_weights()
    return model
