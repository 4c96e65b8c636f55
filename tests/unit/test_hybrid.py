"""searchr1.retrieval.hybrid.reciprocal_rank_fusion, against hand-computed fused scores."""

from __future__ import annotations

import numpy as np
import pytest

from searchr1.retrieval.hybrid import HybridRanker, reciprocal_rank_fusion


def arr(*rows):
    return np.array(rows, dtype=np.int64)


def test_two_rankings_hand_computed():
    a = arr([10, 20, 30])
    b = arr([30, 40, 10])
    ids, scores = reciprocal_rank_fusion([a, b], k=4, rrf_k=60)
    # 10: ranks 1 and 3; 30: ranks 3 and 1; 20: rank 2 in a; 40: rank 2 in b
    expected = {10: 1 / 61 + 1 / 63, 30: 1 / 63 + 1 / 61, 20: 1 / 62, 40: 1 / 62}
    # 10 and 30 tie (smaller id first), as do 20 and 40
    assert ids.tolist() == [[10, 30, 20, 40]]
    np.testing.assert_allclose(scores[0], [expected[i] for i in (10, 30, 20, 40)], rtol=1e-6)


def test_doc_in_both_lists_beats_doc_first_in_one():
    ids, scores = reciprocal_rank_fusion([arr([1, 2]), arr([3, 2])], k=3, rrf_k=60)
    assert ids.tolist() == [[2, 1, 3]]
    np.testing.assert_allclose(scores[0], [2 / 62, 1 / 61, 1 / 61], rtol=1e-6)


def test_output_dtypes():
    ids, scores = reciprocal_rank_fusion([arr([1])], k=1)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_ties_broken_by_smaller_id():
    ids, _ = reciprocal_rank_fusion([arr([9]), arr([4])], k=2, rrf_k=60)
    assert ids.tolist() == [[4, 9]]


def test_padding_is_ignored_but_counts_no_rank():
    # -1 slots are skipped; the doc after a -1 keeps its own position's rank (3 here).
    ids, scores = reciprocal_rank_fusion([arr([5, -1, 6])], k=3, rrf_k=60)
    assert ids.tolist() == [[5, 6, -1]]
    np.testing.assert_allclose(scores[0, :2], [1 / 61, 1 / 63], rtol=1e-6)
    assert np.isneginf(scores[0, 2])


def test_duplicate_id_in_one_list_counted_once_at_its_best_rank():
    ids, scores = reciprocal_rank_fusion([arr([7, 7, 8])], k=2, rrf_k=60)
    assert ids.tolist() == [[7, 8]]
    np.testing.assert_allclose(scores[0], [1 / 61, 1 / 63], rtol=1e-6)


def test_weights_scale_each_ranking():
    ids, scores = reciprocal_rank_fusion([arr([1, 2]), arr([2, 1])], k=2, rrf_k=60, weights=[1.0, 3.0])
    # 1: 1/61 + 3/62 ; 2: 1/62 + 3/61 (larger)
    assert ids.tolist() == [[2, 1]]
    np.testing.assert_allclose(scores[0], [1 / 62 + 3 / 61, 1 / 61 + 3 / 62], rtol=1e-6)


def test_rrf_k_zero():
    _, scores = reciprocal_rank_fusion([arr([1, 2])], k=2, rrf_k=0)
    np.testing.assert_allclose(scores[0], [1.0, 0.5], rtol=1e-6)


def test_k_larger_than_candidates_pads():
    ids, scores = reciprocal_rank_fusion([arr([1, 2]), arr([2, -1])], k=5, rrf_k=60)
    assert ids.tolist() == [[2, 1, -1, -1, -1]]
    assert np.isneginf(scores[0, 2:]).all()
    assert np.isfinite(scores[0, :2]).all()


def test_k_smaller_than_candidates_truncates():
    ids, _ = reciprocal_rank_fusion([arr([3, 1, 2])], k=2)
    assert ids.tolist() == [[3, 1]]


def test_queries_are_fused_independently():
    ids, _ = reciprocal_rank_fusion([arr([1, 2], [3, 4]), arr([2, 1], [4, -1])], k=2, rrf_k=60)
    assert ids.tolist() == [[1, 2], [4, 3]]


def test_rankings_of_different_depths():
    ids, _ = reciprocal_rank_fusion([arr([1]), arr([2, 1, 3])], k=3, rrf_k=60)
    assert ids.tolist() == [[1, 2, 3]]


def test_all_padding_gives_empty_row():
    ids, scores = reciprocal_rank_fusion([arr([-1, -1])], k=2)
    assert ids.tolist() == [[-1, -1]]
    assert np.isneginf(scores).all()


def test_mismatched_query_counts():
    with pytest.raises(ValueError, match="same number of queries"):
        reciprocal_rank_fusion([arr([1], [2]), arr([1])], k=1)


def test_no_rankings():
    with pytest.raises(ValueError, match="at least one ranking"):
        reciprocal_rank_fusion([], k=1)


def test_wrong_number_of_weights():
    with pytest.raises(ValueError, match="1 weights for 2 rankings"):
        reciprocal_rank_fusion([arr([1]), arr([1])], k=1, weights=[1.0])


class FixedRanker:
    """A Ranker returning a fixed list for every query; records the depth it was asked for."""

    num_docs = 10

    def __init__(self, order):
        self.order = order
        self.asked = []

    def rank(self, queries, k):
        self.asked.append(k)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        n = min(k, len(self.order))
        ids[:, :n] = self.order[:n]
        return ids, np.zeros(ids.shape, dtype=np.float32)


def test_hybrid_ranker_fuses_candidates_to_depth():
    a, b = FixedRanker([1, 2, 3, 4]), FixedRanker([4, 3, 2, 1])
    h = HybridRanker([a, b], depth=2, rrf_k=60)
    ids, _ = h.rank(["q"], k=1)
    # depth 2: a gives [1, 2], b gives [4, 3]: four singletons, ties of 1/61 between 1 and 4
    assert a.asked == [2] and b.asked == [2]
    assert ids.tolist() == [[1]]


def test_hybrid_ranker_depth_at_least_k():
    a = FixedRanker([1, 2, 3, 4])
    HybridRanker([a], depth=2).rank(["q"], k=3)
    assert a.asked == [3]
