"""searchr1.retrieval.bm25: pure scoring functions, tokenizer, and a built index on a tiny corpus,
checked against bm25s's own indexing and against the independent rank_bm25 package."""

from __future__ import annotations

import math
from collections import Counter

import bm25s
import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from searchr1.errors import IndexFormatError
from searchr1.retrieval.bm25 import BM25Ranker, BM25Tokenizer, build_bm25, idf, tf_component
from searchr1.retrieval.settings import BM25Config

DOCS = [
    "Red fox, red fox: the red fox jumps over the lazy dog.",
    "A quick brown fox.",
    "Dogs and cats living together in one house with a dog door",
    "The river flows through the old city and the city is old",
    "Ancient cities were built near rivers",
    "Painters paint red barns near the river",
    "The astronomer watched the stars at night, stars everywhere",
    "Stars and planets orbit in the night sky above the quiet harbour town",
]
QUERIES = ["red fox", "old river city", "stars at night", "dog", "painter near the red barn", "brown fox jumps"]
N = len(DOCS)


# ----------------------------------------------------------------------------- idf / tf (hand values)


def test_idf_lucene_hand_values():
    # N=10: df=2 -> ln(1 + 8.5/2.5) = ln 4.4 ; df=8 -> ln(1 + 2.5/8.5) = ln(1.2941...)
    got = idf(np.array([2, 8]), 10, "lucene")
    np.testing.assert_allclose(got, [1.4816045409242156, 0.25782910930209373], rtol=1e-12)


def test_idf_robertson_hand_values_clamped_at_zero():
    # df=2 -> ln(8.5/2.5) = ln 3.4 ; df=5 -> ln(5.5/5.5) = 0 ; df=8 -> ln(2.5/8.5) < 0, clamped to 0
    got = idf(np.array([2, 5, 8]), 10, "robertson")
    np.testing.assert_allclose(got, [1.2237754316221157, 0.0, 0.0], atol=1e-12)


def test_idf_atire_hand_values():
    # ln(N / df): ln 5, ln 1.25
    got = idf(np.array([2, 8]), 10, "atire")
    np.testing.assert_allclose(got, [1.6094379124341003, 0.22314355131420976], rtol=1e-12)


def test_idf_lucene_is_positive_even_for_a_term_in_every_doc():
    assert idf(np.array([10]), 10, "lucene")[0] == pytest.approx(math.log(1 + 0.5 / 10.5))


def test_idf_unknown_method():
    with pytest.raises(ValueError, match="unknown BM25 method"):
        idf(np.array([1]), 3, "bm42")


def test_tf_component_lucene_and_robertson_hand_values():
    # k1=1.2, b=0.75, tf=2, |d|=10, avg=5: norm = 1.2 * (0.25 + 0.75 * 2) = 2.1 -> 2 / 4.1
    for method in ("lucene", "robertson"):
        got = tf_component(np.array([2]), np.array([10]), 5.0, 1.2, 0.75, method)
        assert got[0] == pytest.approx(2 / 4.1, rel=1e-12)


def test_tf_component_atire_keeps_k1_plus_one():
    got = tf_component(np.array([2]), np.array([10]), 5.0, 1.2, 0.75, "atire")
    assert got[0] == pytest.approx(2 * 2.2 / 4.1, rel=1e-12)


def test_tf_component_average_length_doc():
    # |d| = avg: norm = k1 -> tf / (tf + k1) = 1 / 1.9 for k1=0.9
    got = tf_component(np.array([1]), np.array([5]), 5.0, 0.9, 0.4, "lucene")
    assert got[0] == pytest.approx(1 / 1.9, rel=1e-12)


def test_tf_component_b_zero_ignores_length():
    got = tf_component(np.array([3, 3]), np.array([1, 100]), 10.0, 1.5, 0.0, "lucene")
    np.testing.assert_allclose(got, [3 / 4.5, 3 / 4.5], rtol=1e-12)


def test_tf_component_unknown_method():
    with pytest.raises(ValueError, match="unknown BM25 method"):
        tf_component(np.array([1]), np.array([1]), 1.0, 1.0, 0.5, "bm42")


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_lowercases_drops_stopwords_and_stems():
    assert BM25Tokenizer().terms("The Running DOGS of the cities!") == ["run", "dog", "citi"]


def test_tokenizer_drops_one_character_words():
    assert BM25Tokenizer("", "").terms("a b cd e fg") == ["cd", "fg"]


def test_tokenizer_without_stemmer_or_stopwords():
    assert BM25Tokenizer("", "").terms("The running dogs") == ["the", "running", "dogs"]


def test_tokenizer_only_stopwords_gives_no_terms():
    assert BM25Tokenizer().terms("the and of a") == []


def test_tokenizer_rejects_unknown_stopword_list():
    with pytest.raises(ValueError, match="stop-word list"):
        BM25Tokenizer("english", "klingon")


def test_tokenizer_rejects_unknown_stemmer():
    with pytest.raises(ValueError, match="no 'klingon' stemmer"):
        BM25Tokenizer("klingon", "en")


# ----------------------------------------------------------------------------- built index


def tokens(cfg: BM25Config) -> list[list[str]]:
    tok = BM25Tokenizer(cfg.stemmer, cfg.stopwords)
    return [tok.terms(d) for d in DOCS]


def build(tmp_path, **kw) -> tuple[BM25Ranker, BM25Config]:
    cfg = BM25Config(**kw)
    out = tmp_path / f"bm25-{'-'.join(f'{k}{v}' for k, v in sorted(kw.items()))}"
    build_bm25(iter(DOCS), out, cfg, total=N, progress=False)
    return BM25Ranker(out, backend="numpy"), cfg


def dense_scores(ranker: BM25Ranker, queries: list[str]) -> np.ndarray:
    """Our ranking for k=N as a [Q, N] score matrix (0 where a doc is not returned)."""
    ids, scores = ranker.rank(queries, N)
    out = np.zeros((len(queries), N))
    for q in range(len(queries)):
        keep = ids[q] >= 0
        out[q, ids[q][keep]] = scores[q][keep]
    return out


def test_corpus_fixture_has_no_negative_robertson_idf():
    # Precondition of the rank_bm25 comparison below: df < N/2 for every term.
    df = Counter(t for doc in tokens(BM25Config()) for t in set(doc))
    assert max(df.values()) < N / 2


def test_build_stats(tmp_path):
    cfg = BM25Config()
    stats = build_bm25(iter(DOCS), tmp_path / "i", cfg, progress=False)
    toks = tokens(cfg)
    assert stats["num_docs"] == N
    assert stats["avg_doc_len"] == pytest.approx(sum(map(len, toks)) / N)
    assert stats["nnz"] == sum(len(set(t)) for t in toks)
    assert stats["vocab_size"] == len({w for t in toks for w in t}) + 1  # + bm25s's empty token


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.5, 0.75)])
def test_scores_equal_bm25s_own_indexing(tmp_path, method, k1, b):
    ranker, cfg = build(tmp_path, k1=k1, b=b, method=method)
    ref = bm25s.BM25(k1=k1, b=b, method=method)
    ref.index(tokens(cfg), show_progress=False)
    tok = BM25Tokenizer(cfg.stemmer, cfg.stopwords)
    expected = np.array([ref.get_scores(tok.terms(q)) for q in QUERIES])
    np.testing.assert_allclose(dense_scores(ranker, QUERIES), expected, atol=1e-5)


@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.2, 0.75)])
def test_robertson_scores_times_k1_plus_one_equal_rank_bm25(tmp_path, k1, b):
    # rank_bm25's BM25Okapi: idf ln((N-df+.5)/(df+.5)) (positive for every term here) and
    # tf*(k1+1)/(tf + k1*(1-b+b*dl/avgdl)); ours (bm25s's robertson) drops the (k1+1) factor.
    ranker, cfg = build(tmp_path, k1=k1, b=b, method="robertson")
    ref = BM25Okapi(tokens(cfg), k1=k1, b=b)
    tok = BM25Tokenizer(cfg.stemmer, cfg.stopwords)
    expected = np.array([ref.get_scores(tok.terms(q)) for q in QUERIES])
    assert (expected > 0).any(axis=1).all()
    np.testing.assert_allclose(dense_scores(ranker, QUERIES) * (k1 + 1), expected, atol=1e-5)


def reference_lucene(query: str, k1: float, b: float) -> np.ndarray:
    """Brute-force lucene BM25 written out from the formula, one doc at a time."""
    toks = tokens(BM25Config())
    avg = sum(map(len, toks)) / N
    df = Counter(t for doc in toks for t in set(doc))
    scores = np.zeros(N)
    for d, doc in enumerate(toks):
        tf = Counter(doc)
        for t in BM25Tokenizer().terms(query):
            if tf[t]:
                w = math.log(1 + (N - df[t] + 0.5) / (df[t] + 0.5))
                scores[d] += w * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / avg))
    return scores


@pytest.mark.parametrize("query", QUERIES)
def test_ranking_order_matches_brute_force(tmp_path, query):
    ranker, cfg = build(tmp_path)
    ref = reference_lucene(query, cfg.k1, cfg.b)
    matching = np.flatnonzero(ref > 0)
    assert len(set(ref[matching].round(6))) == len(matching)  # no ties: the order is well defined
    expected_ids = matching[np.argsort(-ref[matching])]
    k = 3
    ids, scores = ranker.rank([query], k)
    n = min(k, len(expected_ids))
    assert ids[0, :n].tolist() == expected_ids[:n].tolist()
    np.testing.assert_allclose(scores[0, :n], ref[expected_ids[:n]], atol=1e-5)
    assert (ids[0, n:] == -1).all()


def test_chunked_build_equals_single_chunk_build(tmp_path):
    one, _ = build(tmp_path, chunk_docs=1000)
    chunked, _ = build(tmp_path, chunk_docs=3)
    a_ids, a_scores = one.rank(QUERIES, N)
    b_ids, b_scores = chunked.rank(QUERIES, N)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)


def test_rank_shapes_and_dtypes(tmp_path):
    ranker, _ = build(tmp_path)
    ids, scores = ranker.rank(QUERIES, 2)
    assert ids.shape == scores.shape == (len(QUERIES), 2)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize("query", ["zebra quantum", "", "the and of"])
def test_query_without_known_terms_gives_empty_ranking(tmp_path, query):
    ranker, _ = build(tmp_path)
    ids, scores = ranker.rank([query], 3)
    assert ids.tolist() == [[-1, -1, -1]]
    assert np.isneginf(scores).all()


def test_unknown_query_in_a_batch_leaves_other_rows_intact(tmp_path):
    ranker, _ = build(tmp_path)
    ids, _ = ranker.rank(["brown", "zebra", "brown"], 2)
    assert ids.tolist() == [[1, -1], [-1, -1], [1, -1]]


def test_k_larger_than_corpus_is_padded(tmp_path):
    ranker, _ = build(tmp_path)
    ids, scores = ranker.rank(["red river"], N + 5)
    # red: docs 0, 5; river: docs 3, 4, 5 -> four matching docs, the rest padding
    assert sorted(ids[0, :4].tolist()) == [0, 3, 4, 5]
    assert (ids[0, 4:] == -1).all()
    assert np.isneginf(scores[0, 4:]).all()
    assert np.all(np.diff(scores[0, :4]) <= 0)


def test_ranker_on_a_directory_without_an_index(tmp_path):
    with pytest.raises(IndexFormatError, match="not a searchr1 BM25 index"):
        BM25Ranker(tmp_path)


def test_build_on_empty_corpus(tmp_path):
    with pytest.raises(IndexFormatError, match="empty corpus"):
        build_bm25(iter([]), tmp_path / "i", BM25Config(), progress=False)
