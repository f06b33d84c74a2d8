"""The Alpaca prompt template shared by training, evaluation and the synthetic task.

The prompt ends right after the ``### Response:`` header line; the response (the solution) is
encoded separately and appended, so the loss mask lines up with token boundaries exactly.
"""

from __future__ import annotations

PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n"
)


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the record field's name
    """Alpaca prompt: preamble, ``### Instruction:``, ``### Input:`` (only when non-empty), ``### Response:``."""
    if input:
        return (
            f"{PREAMBLE_WITH_INPUT}### Instruction:\n{instruction}\n\n"
            f"### Input:\n{input}\n\n### Response:\n"
        )
    return f"{PREAMBLE_NO_INPUT}### Instruction:\n{instruction}\n\n### Response:\n"
