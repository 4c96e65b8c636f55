"""Trajectories -> padded tensors: exact masks with injected tokens in the middle, the ablation, trimming."""

import pytest
import torch

from searchr1.rollout.trajectory import Trajectory
from searchr1.train.batch import collate
from searchr1.train.rollouts import PromptSampler

PAD = 0


def _traj(prompt, pieces, group=0):
    t = Trajectory(question="q", golden_answers=["a"], prompt_ids=list(prompt), group=group)
    for ids, mask in pieces:
        t.append(list(ids), mask, [-0.5] * len(ids) if mask else None)
    return t


def test_collate_layout_and_masks_with_injected_tokens_in_the_middle():
    a = _traj([5, 6, 7], [([10, 11], 1), ([20, 21, 22], 0), ([12], 1)], group=0)
    b = _traj([8], [([13], 1)], group=1)
    batch = collate([a, b], PAD)
    assert batch.response_start == 3
    assert batch.input_ids.tolist() == [[5, 6, 7, 10, 11, 20, 21, 22, 12],
                                         [PAD, PAD, 8, 13, PAD, PAD, PAD, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[1] * 9, [0, 0, 1, 1, 0, 0, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]
    assert batch.policy_mask.tolist() == [[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    assert batch.loss_mask.tolist() == batch.policy_mask.tolist()
    assert batch.sample_logprobs.tolist() == [[-0.5, -0.5, 0, 0, 0, -0.5], [-0.5, 0, 0, 0, 0, 0]]
    assert batch.group_ids.tolist() == [0, 1]


def test_mask_retrieved_false_trains_on_injected_tokens_but_not_padding():
    a = _traj([5, 6], [([10], 1), ([20, 21], 0), ([12], 1)])
    b = _traj([8], [([13], 1)])
    masked = collate([a, b], PAD, mask_retrieved=True)
    unmasked = collate([a, b], PAD, mask_retrieved=False)
    assert masked.loss_mask.tolist() == [[1, 0, 0, 1], [1, 0, 0, 0]]
    assert unmasked.loss_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert unmasked.policy_mask.tolist() == masked.policy_mask.tolist()  # the truth is kept for metrics


def test_rows_trims_shared_padding_and_keeps_alignment():
    a = _traj([5, 6, 7], [([10, 11, 12, 13], 1)])
    b = _traj([8], [([14], 1)])
    c = _traj([9, 9], [([15, 16], 1), ([30], 0)])
    batch = collate([a, b, c], PAD)
    sub = batch.rows(torch.tensor([1, 2]))
    assert sub.response_start == 2  # one prompt column is padding for both rows
    assert sub.input_ids.tolist() == [[PAD, 8, 14, PAD, PAD], [9, 9, 15, 16, 30]]
    assert sub.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert sub.loss_mask.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert sub.group_ids.tolist() == [0, 0]


def test_collate_rejects_misaligned_trajectories():
    t = _traj([1], [([2, 3], 1)])
    t.policy_mask.pop()
    with pytest.raises(ValueError, match="mask entries"):
        collate([t], PAD)
    with pytest.raises(ValueError):
        collate([], PAD)


def test_prompt_sampler_covers_each_epoch_and_resumes_exactly():
    s = PromptSampler(5, seed=3)
    first = s.take(5)
    assert sorted(first) == list(range(5))
    s.take(2)
    state = s.state_dict()
    rest = s.take(7)
    r = PromptSampler(5, seed=3)
    r.load_state_dict(state)
    assert r.take(7) == rest
    assert PromptSampler(5, seed=3).take(5) == first  # seeded


def test_by_length_orders_rows_by_response_then_prompt_length():
    rows = [_traj([5, 6, 7], [([10] * 5, 1)]), _traj([5, 6, 7], [([11] * 3, 1)]), _traj([8, 9], [([12] * 4, 1)]),
            _traj([8, 9], [([13] * 2, 1)]), _traj([8], [([14] * 3, 1)])]
    batch = collate(rows, PAD)
    assert batch.by_length(torch.arange(5)).tolist() == [3, 4, 1, 2, 0]
    assert batch.by_length(torch.tensor([0, 2])).tolist() == [2, 0]
    # rows 3 and 4 share a micro-batch: prompt columns 1-2 (2 rows x 2, 1 of them pad) + response 3 (1 pad)
    assert batch.rows(torch.tensor([3, 4])).padding() == (10, 2)
    assert batch.padding() == (40, 40 - (3 + 5 + 3 + 3 + 2 + 4 + 2 + 2 + 1 + 3))
