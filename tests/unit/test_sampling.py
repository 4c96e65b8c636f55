"""searchr1.rollout.sampling: filters and the sampled token's log-prob, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from searchr1.rollout.generator import SamplingParams, find_stop
from searchr1.rollout.sampling import filter_logits, sample_next

NEG = float("-inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert filter_logits(logits, top_k=2).tolist() == [[NEG, 4.0, 3.0, NEG]]
    assert filter_logits(logits, top_k=0).tolist() == logits.tolist()
    assert filter_logits(logits, top_k=10).tolist() == logits.tolist()


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.2 (as logs): p=0.7 keeps 0.5 and 0.3 (0.5 alone is short of 0.7)
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    kept = filter_logits(logits, top_p=0.7)
    assert torch.isinf(kept[0, 0]) and not torch.isinf(kept[0, 1:]).any()
    # p=0.5 is reached by the first token exactly: only it survives
    kept = filter_logits(logits, top_p=0.5)
    assert (~torch.isinf(kept)).sum().item() == 1 and kept[0, 1].item() == pytest.approx(math.log(0.5))
    # a tiny p still keeps one token
    assert (~torch.isinf(filter_logits(logits, top_p=1e-9))).sum().item() == 1


def test_greedy_picks_argmax_and_reports_its_log_prob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=0))
    assert tokens.tolist() == [1, 0]
    z0 = math.log(1 + math.e**2 + math.e)
    z1 = math.log(math.e**3 + 2)
    assert logprobs.tolist() == pytest.approx([2 - z0, 3 - z1], abs=1e-6)


def test_temperature_scales_the_reported_log_prob():
    logits = torch.tensor([[0.0, 2.0]])
    # top_k=1 forces token 1; its log-prob is under softmax(logits / 2), not under the filter
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=2.0, top_k=1))
    assert tokens.tolist() == [1]
    assert logprobs.item() == pytest.approx(1 - math.log(1 + math.e), abs=1e-6)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.zeros(64, 50)
    draw = lambda seed: sample_next(logits, SamplingParams(1.0), torch.Generator().manual_seed(seed))[0]
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.9, 0.1]])).repeat(4000, 1)
    tokens, _ = sample_next(logits, SamplingParams(1.0), torch.Generator().manual_seed(0))
    assert 0.87 < (tokens == 0).float().mean().item() < 0.93


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}])
def test_invalid_sampling_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_find_stop_returns_the_earliest():
    assert find_stop("a </answer> b </search>", ["</search>", "</answer>"]) == "</answer>"
    assert find_stop("nothing here", ["</search>"]) is None
    assert find_stop("", []) is None


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_name_the_row_instead_of_a_multinomial_assert(greedy, bad):
    from searchr1.errors import NonFiniteLogitsError

    logits = torch.zeros(4, 5)
    logits[2, 3] = bad
    params = SamplingParams(temperature=0.0 if greedy else 1.0)
    with pytest.raises(NonFiniteLogitsError, match=r"NaN or infinite in batch row\(s\) \[2\] of 4"):
        sample_next(logits, params, torch.Generator().manual_seed(0))


def test_masked_minus_inf_logits_still_sample():
    logits = torch.tensor([[0.0, NEG, 0.0], [NEG, 1.0, NEG]])
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert tokens[1].item() == 1 and logprobs[1].item() == 0.0 and tokens[0].item() in (0, 2)
