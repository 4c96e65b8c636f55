"""searchr1.retrieval.dense's pooling, on hand-made hidden states (the encoder itself: tests/integration)."""

import torch

from searchr1.retrieval.dense import mean_pool


def test_mean_pool_of_fp16_states_is_taken_in_fp32():
    # 40 tokens of 3000 each: the fp16 sum (120000) overflows fp16's 65504
    hidden = torch.full((1, 40, 2), 3000.0, dtype=torch.float16)
    hidden[0, :, 1] = 1e-3
    mask = torch.ones(1, 40, dtype=torch.long)
    pooled = mean_pool(hidden, mask)
    assert pooled.dtype == torch.float32
    assert pooled[0, 0].item() == 3000.0
    assert abs(pooled[0, 1].item() - 1e-3) < 1e-6


def test_mean_pool_ignores_padding_and_an_empty_row_is_zero():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]], dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0], [0.0]]
