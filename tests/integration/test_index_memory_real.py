"""searchr1.index_memory against real indexes: faiss indexes built from random vectors and
serialised, and our BM25 index and passage store built from wiki18_mini passages.

Tolerances: 1% for the faiss types whose layout is deterministic (in practice the prediction is
exact), 2% for HNSW, whose per-vector level is random (in practice within 0.05%).
"""

from __future__ import annotations

import numpy as np
import pytest

from searchr1.index_memory import (
    AVG_PASSAGE_BYTES,
    BM25_NNZ_PER_DOC,
    bm25_matrix_bytes,
    docstore_bytes,
    faiss_index_bytes,
)

faiss = pytest.importorskip("faiss")

D = 64

CASES = [  # (factory string, vectors added, vectors trained on, tolerance)
    ("Flat", 100_000, 0, 0.01),
    ("SQfp16", 100_000, 0, 0.01),
    ("SQ8", 100_000, 5_000, 0.01),
    ("SQ4", 50_000, 5_000, 0.01),
    ("PQ16np", 20_000, 10_000, 0.01),  # np: no polysemous training (slow; no effect on size)
    ("IVF256,Flat", 50_000, 10_000, 0.01),
    ("IVF256,SQ8", 50_000, 10_000, 0.01),
    ("IVF256,PQ16np", 50_000, 10_000, 0.01),
    ("IVF128,PQ8x4", 20_000, 10_000, 0.01),
    ("HNSW32", 20_000, 0, 0.02),
    ("HNSW16,SQ8", 20_000, 5_000, 0.02),
    ("IVF64_HNSW16,Flat", 20_000, 5_000, 0.02),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _build(spec: str, n: int, n_train: int, metric=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, D), dtype=np.float32)
    index = faiss.index_factory(D, spec, faiss.METRIC_INNER_PRODUCT if metric is None else metric)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = 16  # build speed only; the graph's size does not depend on it
    if not index.is_trained:
        index.train(x[:n_train])
    index.add(x)
    return index


@pytest.mark.parametrize("spec, n, n_train, tol", CASES, ids=[c[0] for c in CASES])
def test_predicted_size_matches_serialized_faiss_index(spec, n, n_train, tol):
    index = _build(spec, n, n_train)
    actual = len(faiss.serialize_index(index))
    predicted = faiss_index_bytes(spec, n, D).file_bytes
    assert abs(predicted - actual) <= tol * actual, (spec, predicted, actual)


def test_l2_ivfpq_precomputed_table_size():
    built = _build("IVF64,PQ8np", 5_000, 5_000, faiss.METRIC_L2)
    index = faiss.downcast_index(built)  # a view: `built` owns the C++ object
    index.use_precomputed_table = 0  # let faiss choose, as at load time
    index.precompute_table()
    assert index.use_precomputed_table == 1
    assert index.precomputed_table.size() * 4 == faiss_index_bytes("IVF64,PQ8np", 5_000, D, metric="l2").search_tables


def test_bm25_and_passage_store_files(tmp_path, wiki_path):
    """Our BM25 files and passage store have exactly the predicted size given the corpus's
    measured per-passage numbers, and those numbers are near the wiki-18 calibration constants."""
    from itertools import islice

    from searchr1.retrieval.bm25 import build_bm25
    from searchr1.retrieval.corpus import iter_passages
    from searchr1.retrieval.docstore import DOCS_FILE, write_docstore
    from searchr1.retrieval.settings import BM25Config

    passages = list(islice(iter_passages(wiki_path), 2000))
    n = len(passages)
    stats = build_bm25((p.contents for p in passages), tmp_path / "bm25", BM25Config(), total=n, progress=False)
    matrix = sum((tmp_path / "bm25" / f).stat().st_size for f in (
        "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"))
    assert bm25_matrix_bytes(n, stats["nnz"] / n, stats["vocab_size"]) == matrix
    assert stats["nnz"] / n == pytest.approx(BM25_NNZ_PER_DOC, rel=0.15)

    write_docstore(passages, tmp_path / "docs")
    total = sum(f.stat().st_size for f in (tmp_path / "docs").iterdir())
    avg = (tmp_path / "docs" / DOCS_FILE).stat().st_size / n
    assert docstore_bytes(n, avg) == total
    assert avg == pytest.approx(AVG_PASSAGE_BYTES, rel=0.15)
