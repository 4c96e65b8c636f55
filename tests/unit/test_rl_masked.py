"""searchr1.rl.masked: masked reductions and the loss aggregation modes, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from searchr1.rl import AGG_MODES, aggregate_loss, masked_mean, masked_sum, masked_var, masked_whiten

NAN = float("nan")


def test_masked_sum_and_mean_ignore_holes_and_nan():
    x = torch.tensor([[1.0, NAN, 3.0], [4.0, 5.0, math.inf]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    assert masked_sum(x, mask).item() == 13.0  # 1 + 3 + 4 + 5
    assert masked_mean(x, mask).item() == 3.25  # 13 / 4
    assert masked_sum(x, mask, dim=-1).tolist() == [4.0, 9.0]
    assert masked_mean(x, mask, dim=-1).tolist() == [2.0, 4.5]
    assert masked_mean(x, mask.bool(), dim=0).tolist() == [2.5, 5.0, 3.0]


def test_masked_mean_of_nothing_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[0, 0], [1, 0]])
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    assert masked_mean(x, mask, dim=-1).tolist() == [0.0, 3.0]


def test_masked_var_by_hand():
    x = torch.tensor([[1.0, 100.0, 2.0], [3.0, 4.0, NAN]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    # selected 1, 2, 3, 4: mean 2.5, squared deviations 2.25 + .25 + .25 + 2.25 = 5
    assert masked_var(x, mask).item() == pytest.approx(5 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(5 / 4)


def test_masked_var_with_zero_or_one_element_is_zero():
    x = torch.tensor([[7.0, 8.0]])
    assert masked_var(x, torch.tensor([[0, 0]])).item() == 0.0
    assert masked_var(x, torch.tensor([[0, 1]])).item() == 0.0
    assert masked_var(x, torch.tensor([[0, 1]]), unbiased=False).item() == 0.0


def test_masked_whiten_by_hand():
    x = torch.tensor([[1.0, 99.0, 3.0], [5.0, NAN, 0.0]])
    mask = torch.tensor([[1, 0, 1], [1, 0, 0]])
    # selected 1, 3, 5: mean 3, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    out = masked_whiten(x, mask, eps=0.0)
    # (1-3)/2, masked, (3-3)/2 ; (5-3)/2, masked, masked  -- mask-0 positions are 0
    assert out.tolist() == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    out = masked_whiten(x, mask, shift_mean=False, eps=0.0)  # same scale, the mean 3 added back
    assert out.tolist() == [[-1.0 + 3, 0.0, 0.0 + 3], [1.0 + 3, 0.0, 0.0]]


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_is_safe_with_zero_or_one_element(shift_mean):
    x = torch.tensor([[2.0, 5.0, NAN]])
    empty = masked_whiten(x, torch.tensor([[0, 0, 0]]), shift_mean=shift_mean)
    assert empty.tolist() == [[0.0, 0.0, 0.0]]
    single = masked_whiten(x, torch.tensor([[0, 1, 0]]), shift_mean=shift_mean)
    assert torch.isfinite(single).all()
    assert single.tolist() == [[0.0, 0.0 if shift_mean else 5.0, 0.0]]


# The 2x3 example with a hole:
#   loss = [[1, 2, 3],       mask = [[1, 0, 1],     (row 0: a hole in the middle)
#           [4, 5, 6]]               [0, 1, 0]]     (row 1: only the middle token)
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    "mode, norm, expected",
    [
        ("token-mean", None, 3.0),  # (1 + 3 + 5) / 3
        ("seq-mean-token-mean", None, 3.5),  # row means 2 and 5 -> (2 + 5) / 2
        ("seq-mean-token-sum", None, 4.5),  # row sums 4 and 5 -> (4 + 5) / 2
        ("seq-mean-token-sum-norm", None, 1.5),  # 9 / (B * T) = 9 / (2 * 3)
        ("seq-mean-token-sum-norm", 10, 0.45),  # 9 / (2 * 10)
    ],
)
def test_aggregate_loss_modes_by_hand(mode, norm, expected):
    assert aggregate_loss(LOSS, MASK, mode, norm=norm).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 3.0),  # unchanged: the empty row adds no token
        ("seq-mean-token-mean", 3.5),  # the empty row is excluded, not averaged in as 0
        ("seq-mean-token-sum", 4.5),  # likewise
        ("seq-mean-token-sum-norm", 1.0),  # the constant normaliser counts every row: 9 / (3 * 3)
    ],
)
def test_aggregate_loss_excludes_rows_without_tokens(mode, expected):
    loss = torch.cat([LOSS, torch.tensor([[7.0, 8.0, 9.0]])])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    assert aggregate_loss(loss, mask, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_loss_gradient_is_zero_on_masked_tokens_and_empty_is_zero(mode):
    loss = LOSS.clone().requires_grad_(True)
    aggregate_loss(loss, MASK, mode).backward()
    assert (loss.grad[MASK == 0] == 0).all()
    assert (loss.grad[MASK == 1] > 0).all()
    empty = aggregate_loss(torch.tensor([[NAN, 1.0]]), torch.zeros(1, 2), mode)
    assert empty.item() == 0.0


def test_aggregate_loss_gradients_by_hand():
    # token-mean: d/dx of (x00 + x02 + x11) / 3 -> 1/3 on each selected token
    loss = LOSS.clone().requires_grad_(True)
    aggregate_loss(loss, MASK, "token-mean").backward()
    assert torch.allclose(loss.grad, MASK / 3)
    # seq-mean-token-mean: ((x00 + x02) / 2 + x11) / 2 -> 1/4, 1/4, 1/2
    loss = LOSS.clone().requires_grad_(True)
    aggregate_loss(loss, MASK, "seq-mean-token-mean").backward()
    assert torch.allclose(loss.grad, torch.tensor([[0.25, 0.0, 0.25], [0.0, 0.5, 0.0]]))


def test_aggregate_loss_rejects_unknown_mode_and_bad_norm():
    with pytest.raises(ValueError, match="unknown loss aggregation mode"):
        aggregate_loss(LOSS, MASK, "seq-mean")
    with pytest.raises(ValueError, match="norm"):
        aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm=0)
