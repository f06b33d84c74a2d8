"""Batched sampling with the model's KV cache (prefill, then one token per step).

Prompts of different lengths are left-padded to a common length `L`; `cache.key_padding_mask`
hides the pads from every query. RoPE only sees relative positions, so a left-padded prompt gives
the same logits as the unpadded one (to float tolerance). Plain decoding runs only head 1
(`n_future_heads=1`): the extra MTP heads are for training and self-speculative decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class TextTokenizer(Protocol):
    """What generation needs of `wmtp.model.tokenizer.Tokenizer`."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


# should_stop(sample_index, generated_ids) -> True once the sample is finished (e.g. a stop string).
StopFn = Callable[[int, list[int]], bool]


def sample_next_token(logits: Tensor, temperature: float = 0.0, top_p: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """logits: `[B, V]` → token ids `[B]`. temperature 0 is greedy (argmax); top_p < 1 samples from
    the smallest set of most likely tokens whose probability reaches top_p (nucleus sampling)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token if the mass before it is still below top_p (the most likely is always kept).
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _fit_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, max_seq_len: int
                 ) -> list[list[int]]:
    if max_new_tokens >= max_seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be below the model's max_seq_len={max_seq_len}")
    budget = max_seq_len - max_new_tokens
    if any(len(p) > budget for p in prompts):
        log.warning("prompts longer than %d tokens are cut from the left to fit max_seq_len=%d", budget,
                    max_seq_len)
    out = [list(p[-budget:]) for p in prompts]
    if any(not p for p in out):
        raise ValueError("empty prompt: encode prompts with bos=True")
    return out


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[Tensor, Tensor]:
    """→ tokens `[B, L]` long and mask `[B, L]` bool (True = real token), pads on the left."""
    length = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, length - len(p):] = True
    return tokens.to(device), mask.to(device)


@torch.no_grad()
def generate_tokens(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    temperature: float = 0.0, top_p: float = 1.0, eos_id: int | None = None,
                    pad_id: int = 0, should_stop: StopFn | None = None, seed: int = 0
                    ) -> list[list[int]]:
    """Sample continuations of a batch of token prompts with the KV cache.

    Returns the new tokens of each sample, ending with EOS when it was produced (per-sample stop:
    a finished sample keeps being fed pads until the whole batch is done, its output is frozen).
    """
    device = model.tok_embeddings.weight.device
    prompts = _fit_prompts(prompts, max_new_tokens, model.args.max_seq_len)
    tokens, prompt_mask = left_pad(prompts, pad_id, device)
    B, L = tokens.shape
    total = L + max_new_tokens
    cache = model.allocate_cache(B, total)
    key_mask = torch.ones((B, total), dtype=torch.bool, device=device)
    key_mask[:, :L] = prompt_mask
    cache.key_padding_mask = key_mask
    generator = torch.Generator(device=device).manual_seed(seed)

    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    logits = model(tokens, start_pos=0, cache=cache, n_future_heads=1, return_logits=True).logits[:, -1, 0]
    for step in range(max_new_tokens):
        next_tokens = sample_next_token(logits, temperature, top_p, generator)
        for i, tok in enumerate(next_tokens.tolist()):
            if done[i]:
                continue
            out[i].append(tok)
            if (eos_id is not None and tok == eos_id) or (should_stop is not None and should_stop(i, out[i])):
                done[i] = True
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(next_tokens[:, None], start_pos=L + step, cache=cache, n_future_heads=1,
                       return_logits=True).logits[:, -1, 0]
    return out


@torch.no_grad()
def greedy_decode_no_cache(model, prompt: Sequence[int], *, max_new_tokens: int,
                           eos_id: int | None = None) -> list[int]:
    """Reference decoder: a full forward over the whole sequence for every new token, head 1 argmax."""
    device = model.tok_embeddings.weight.device
    seq = list(prompt)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq], device=device), n_future_heads=1, return_logits=True).logits
        tok = int(logits[0, -1, 0].argmax())
        out.append(tok)
        seq.append(tok)
        if tok == eos_id:
            break
    return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generate(model, tokenizer: TextTokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, stop: Sequence[str] = (), seed: int = 0
             ) -> list[str]:
    """Text in, completions out: prompts are encoded with BOS, completions are decoded without EOS
    and cut at the first stop string (checked on the decoded text after every token)."""
    encoded = [tokenizer.encode(p, bos=True) for p in prompts]
    stop = tuple(stop)

    # Called after every token: a new stop string ends at the last token, so decoding a tail that
    # can hold the longest one (a character may take up to 4 byte-fallback tokens) suffices —
    # decoding the whole completion each time would be quadratic in its length.
    window = 4 * max((len(s) for s in stop), default=0) + 4

    def should_stop(_: int, ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-window:])
        return any(s in tail for s in stop)

    ids = generate_tokens(model, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, eos_id=tokenizer.eos_id, pad_id=max(tokenizer.pad_id, 0),
                          should_stop=should_stop if stop else None, seed=seed)
    texts = []
    for sample in ids:
        if sample and sample[-1] == tokenizer.eos_id:
            sample = sample[:-1]
        texts.append(truncate_at_stop(tokenizer.decode(sample), stop))
    return texts


__all__ = ["generate", "generate_tokens", "greedy_decode_no_cache", "left_pad", "sample_next_token",
           "truncate_at_stop"]
