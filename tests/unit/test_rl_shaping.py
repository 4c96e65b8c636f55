"""searchr1.rl.shaping: DAPO's soft overlong punishment, by hand."""

import pytest
import torch

from searchr1.rl import overlong_penalty


def test_overlong_penalty_by_hand():
    # budget 10, ramp over the last 4 tokens: 0 up to 6, then -1/4 per token, -1 at and past 10
    lengths = torch.tensor([0, 6, 7, 8, 10, 25])
    assert overlong_penalty(lengths, 10, 4).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert overlong_penalty(lengths, 10, 4, factor=0.5).tolist() == pytest.approx([0, 0, -0.125, -0.25, -0.5, -0.5])
    assert overlong_penalty(torch.tensor([9, 10]), 10, 10).tolist() == pytest.approx([-0.9, -1.0])


@pytest.mark.parametrize("buffer,max_length,factor", [(0, 10, 1.0), (11, 10, 1.0), (4, 10, -1.0)])
def test_overlong_penalty_rejects_bad_settings(buffer, max_length, factor):
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), max_length, buffer, factor)
