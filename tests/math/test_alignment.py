"""The docs/MATH.md alignment table, asserted; padding on either side."""

from __future__ import annotations

import torch

from wmtp.losses.alignment import (
    IGNORE_INDEX,
    align_target_weights,
    count_valid_targets,
    shift_labels,
    state_values,
    valid_mask,
)

I = IGNORE_INDEX  # noqa: E741
P0, P1, A, B, C = 10, 11, 20, 21, 22


def test_design_table_three_heads():
    # tokens p0 p1 a b c; only the response a b c are labels.
    labels = torch.tensor([[I, I, A, B, C]])
    expected = torch.tensor([[
        [I, A, B],  # t=0 p0: head1 → p1 (ignored), head2 → a, head3 → b
        [A, B, C],  # t=1 p1
        [B, C, I],  # t=2 a
        [C, I, I],  # t=3 b
        [I, I, I],  # t=4 c
    ]])
    assert torch.equal(shift_labels(labels, 3), expected)
    assert torch.equal(valid_mask(labels, 3), expected != I)
    assert count_valid_targets(labels, 3).tolist() == [3, 3, 2]


def test_padding_either_side_keeps_the_table():
    right = torch.tensor([[I, I, A, B, C, I, I]])  # 2 right pads
    left = torch.tensor([[I, I, I, I, A, B, C]])  # 2 left pads + prompt
    real_left = torch.tensor([[False, False, True, True, True, True, True]])
    for labels, first, attn in ((right, 0, None), (left, 2, real_left)):
        t = shift_labels(labels, 3, attn)[0, first:first + 5]
        assert t[1].tolist() == [A, B, C]
        assert t[0].tolist() == [I, A, B]
        assert count_valid_targets(labels, 3, attn).tolist() == [3, 3, 2]
        assert (shift_labels(labels, 3, attn)[0, :first] == I).all()
    # Without the mask, the left pad at t=1 would predict `a` with head 3: labels cannot tell.
    assert count_valid_targets(left, 3).tolist() == [3, 3, 3]


def test_single_head_and_more_heads_than_sequence():
    labels = torch.tensor([[I, A, B]])
    assert shift_labels(labels, 1).squeeze(-1).tolist() == [[A, B, I]]
    assert count_valid_targets(labels, 5).tolist() == [2, 1, 0, 0, 0]


def test_align_target_weights():
    w = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]])  # w_a=1, w_b=2, w_c=3 on target positions
    W = align_target_weights(w, 3)
    # W_k(t) = w_{t+k}: row t=1 (p1) sees a, b, c.
    assert W[0, 1].tolist() == [1.0, 2.0, 3.0]
    assert W[0, 0].tolist() == [0.0, 1.0, 2.0]
    assert W[0, 4].tolist() == [0.0, 0.0, 0.0]


def test_state_values_shift():
    v = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    s = state_values(v)
    assert torch.allclose(s, torch.tensor([[0.0, 0.1, 0.2]]))
    s.sum().backward()
    assert v.grad.tolist() == [[1.0, 1.0, 0.0]]
