"""Self-speculative decoding gives exactly greedy decoding's tokens, in fewer forwards."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from wmtp.evaluation.generation import generate_tokens, greedy_decode_no_cache
from wmtp.evaluation.speculative import speculative_generate, speculative_greedy
from wmtp.model.transformer import MTPOutput, build_model

V = 97  # prime: the toy sequence x -> 5x+3 has a long cycle


def _step(x: int) -> int:
    return (x * 5 + 3) % V


class OracleMTP:
    """A Markov 'model': head k at a token x predicts step^k(x), wrong when `wrong(x, k)`.

    Exercises full, partial and zero acceptance with hand-checkable counts.
    """

    def __init__(self, n_heads: int, wrong=lambda x, k: False):
        self.n_future_heads, self.wrong = n_heads, wrong
        self.args = SimpleNamespace(max_seq_len=256)
        self.tok_embeddings = SimpleNamespace(weight=torch.zeros(1))
        self.forwards = 0

    def allocate_cache(self, batch, max_seq_len):
        return SimpleNamespace(max_seq_len=max_seq_len)

    def __call__(self, tokens, *, start_pos=0, cache=None, n_future_heads=None, return_logits=False):
        self.forwards += 1
        H = n_future_heads or self.n_future_heads
        B, S = tokens.shape
        logits = torch.zeros(B, S, H, V)
        for b in range(B):
            for s in range(S):
                x = int(tokens[b, s])
                y = x
                for k in range(1, H + 1):
                    y = _step(y)
                    logits[b, s, k - 1, (y + 1) % V if self.wrong(x, k) else y] = 1.0
        return MTPOutput(hidden=[], logits=logits)


def _greedy(x: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        x = _step(x)
        out.append(x)
    return out


def test_perfect_drafts_accept_everything():
    model = OracleMTP(4)
    out, stats = speculative_greedy(model, [7], max_new_tokens=20)
    assert out == _greedy(7, 20)
    # Each step emits the sure token plus 3 accepted drafts: 20 tokens in 5 verification forwards.
    assert (stats.steps, stats.accepted, stats.drafted) == (5, 15, 15)
    assert stats.acceptance_rate == 3.0 and model.forwards == 6


def test_wrong_drafts_are_rejected_and_output_stays_greedy():
    model = OracleMTP(4, wrong=lambda x, k: k >= 2 and (x + k) % 3 == 0)
    out, stats = speculative_greedy(model, [7, 11], max_new_tokens=40)
    assert out == _greedy(11, 40)
    assert 0 < stats.accepted < stats.drafted
    never = OracleMTP(3, wrong=lambda x, k: k >= 2)
    out, stats = speculative_greedy(never, [4], max_new_tokens=10)
    assert out == _greedy(4, 10) and stats.accepted == 0 and stats.steps == 9


def test_eos_inside_accepted_drafts_ends_output():
    seq = _greedy(7, 20)
    eos = seq[5]
    out, _ = speculative_greedy(OracleMTP(4), [7], max_new_tokens=20, eos_id=eos)
    assert eos not in seq[:5]
    assert out == seq[:6]


def test_random_tiny_model_speculative_equals_greedy(tiny_model):
    tiny_model.eval()
    prompts = [[1, 5, 7, 9, 11], [1, 3], [1, 2, 3, 4, 5, 6, 7, 8]]
    spec, stats = speculative_generate(tiny_model, prompts, max_new_tokens=30)
    assert spec == generate_tokens(tiny_model, prompts, max_new_tokens=30)
    assert spec == [greedy_decode_no_cache(tiny_model, p, max_new_tokens=30) for p in prompts]
    assert stats.new_tokens == 90


def test_trained_tiny_model_accepts_drafts_and_equals_greedy(tiny_args):
    """Train the 4-head tiny model on a periodic stream so heads 2..4 become predictive."""
    torch.manual_seed(0)
    model = build_model(tiny_args, seed=0)
    period = torch.randperm(tiny_args.vocab_size)[:7]
    H = tiny_args.n_future_tokens
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        offsets = torch.randint(0, 7, (8,))
        seq = period[(offsets[:, None] + torch.arange(33)[None]) % 7]  # [8, 33]
        logits = model(seq, return_logits=True).logits  # [8, 33, H, V]
        loss = sum(
            torch.nn.functional.cross_entropy(logits[:, : 33 - k, k - 1].reshape(-1, logits.shape[-1]),
                                              seq[:, k:].reshape(-1))
            for k in range(1, H + 1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    prompts = [period[:3].tolist(), period[2:7].tolist()]
    spec, stats = speculative_generate(model, prompts, max_new_tokens=40)
    assert spec == generate_tokens(model, prompts, max_new_tokens=40)
    assert stats.acceptance_rate > 1.0  # most drafts accepted on a learned periodic stream
