"""BM25 over bm25s: stemmed English terms, an index built in bounded memory, loaded memory-mapped.

bm25s stores BM25 as a sparse (docs x terms) matrix of precomputed per-term scores, so a query
score is a sum of columns. Its own `index()` needs every document's token list in RAM (tens of GB
for 21M passages), so `build_bm25` below computes the same matrix in chunks that are spilled to
disk and scattered into column order, then writes bm25s's on-disk format. Queries run through
bm25s itself (`BM25.load(mmap=True)` + `retrieve`).

Scoring follows bm25s (and Kamphuis et al., ECIR 2020): score(q, d) = sum over query terms t of
idf(t) * tfc(tf(t, d), |d|), with |d| counted after stop-word removal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from array import array
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from searchr1.errors import IndexFormatError
from searchr1.retrieval.base import empty_ranking
from searchr1.retrieval.settings import BM25Config

META_FILE = "searchr1.json"
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's default splitter: words of two or more characters


# ----------------------------------------------------------------------------- scoring (pure)


def idf(df: np.ndarray, n_docs: int, method: str) -> np.ndarray:
    """Inverse document frequency per term. df: int[V] -> float64[V]."""
    df = df.astype(np.float64)
    if method == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if method == "robertson":  # clamped at 0 rather than going negative for very common terms
        return np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))
    if method == "atire":
        return np.log(n_docs / np.maximum(df, 1.0))
    raise ValueError(f"unknown BM25 method {method!r}")


def tf_component(tf: np.ndarray, doc_len: np.ndarray, avg_len: float, k1: float, b: float, method: str) -> np.ndarray:
    """Saturated term frequency. tf, doc_len: [nnz] -> float64[nnz].

    Lucene and Robertson drop the constant (k1 + 1) factor of the textbook formula (it does not
    change rankings); ATIRE keeps it.
    """
    tf = tf.astype(np.float64)
    norm = k1 * (1.0 - b + b * doc_len.astype(np.float64) / avg_len)
    if method in ("lucene", "robertson"):
        return tf / (tf + norm)
    if method == "atire":
        return tf * (k1 + 1.0) / (tf + norm)
    raise ValueError(f"unknown BM25 method {method!r}")


# ----------------------------------------------------------------------------- tokenisation


class BM25Tokenizer:
    """Lowercase, split into words, drop stop words, stem. Stateless apart from PyStemmer's cache."""

    def __init__(self, stemmer: str = "english", stopwords: str = "en"):
        self._split = re.compile(TOKEN_PATTERN).findall
        if stopwords == "en":
            from bm25s.stopwords import STOPWORDS_EN

            self._stop = frozenset(STOPWORDS_EN)
        elif stopwords:
            raise ValueError(f"unknown stop-word list {stopwords!r}: use 'en' or ''")
        else:
            self._stop = frozenset()
        self._stem = None
        if stemmer:
            import Stemmer

            try:
                self._stem = Stemmer.Stemmer(stemmer).stemWords
            except KeyError:
                raise ValueError(f"PyStemmer has no {stemmer!r} stemmer") from None

    def terms(self, text: str) -> list[str]:
        words = [w for w in self._split(text.lower()) if w not in self._stop]
        return self._stem(words) if self._stem is not None and words else words


# ----------------------------------------------------------------------------- building


def _batched(it: Iterable, n: int):
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def build_bm25(texts: Iterable[str], out_dir: str | os.PathLike, cfg: BM25Config, total: int | None = None,
               progress: bool = True) -> dict:
    """Index `texts` (row i = passage i) into `out_dir` in bm25s's format. Returns build stats.

    Memory is bounded by the vocabulary, one chunk of `cfg.chunk_docs` documents and a few
    arrays of one value per document; the (doc, term, tf) triples are spilled to disk.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    staging = out_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    tok = BM25Tokenizer(cfg.stemmer, cfg.stopwords)
    vocab: dict[str, int] = {}
    doc_lens = array("I")
    df = np.zeros(0, dtype=np.int64)
    chunk_files = []

    bar = tqdm(total=total, desc="bm25: tokenising", unit="doc", disable=not progress)
    for batch in _batched(texts, cfg.chunk_docs):
        token_ids = array("i")
        lens = np.empty(len(batch), dtype=np.int64)
        for j, text in enumerate(batch):
            terms = tok.terms(text)
            token_ids.extend([vocab.setdefault(t, len(vocab)) for t in terms])
            lens[j] = len(terms)
        first_doc = len(doc_lens)
        doc_lens.extend(lens.tolist())
        # Unique (doc, term) pairs with their counts, doc-major: one vectorised np.unique.
        local_doc = np.repeat(np.arange(len(batch), dtype=np.int64), lens)
        keys = (local_doc << 32) | np.frombuffer(token_ids, dtype=np.int32).astype(np.int64)
        pairs, tf = np.unique(keys, return_counts=True)
        terms_arr = (pairs & 0xFFFFFFFF).astype(np.int32)
        docs_arr = ((pairs >> 32) + first_doc).astype(np.int32)
        path = staging / f"chunk{len(chunk_files):06d}.npz"
        np.savez(path, docs=docs_arr, terms=terms_arr, tf=tf.astype(np.int32))
        chunk_files.append(path)
        if len(df) < len(vocab):
            df = np.concatenate([df, np.zeros(len(vocab) - len(df), dtype=np.int64)])
        df += np.bincount(terms_arr, minlength=len(vocab))
        bar.update(len(batch))
    bar.close()

    n_docs = len(doc_lens)
    if n_docs == 0:
        shutil.rmtree(staging)
        raise IndexFormatError("cannot build a BM25 index over an empty corpus")
    lens_arr = np.frombuffer(doc_lens, dtype=np.uint32).astype(np.int64)
    avg_len = float(lens_arr.mean()) or 1.0
    idf_arr = idf(df, n_docs, cfg.method)

    # The empty token "" gets an empty last column: bm25s itself adds it, and plain bm25s users
    # of this index then get zero scores (not an exception) for queries with no known term.
    vocab[""] = len(vocab)
    n_cols = len(vocab)
    indptr = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1 : len(df) + 1])
    indptr[len(df) + 1 :] = indptr[len(df)]
    nnz = int(indptr[-1])
    data = np.lib.format.open_memmap(staging / "data.npy", mode="w+", dtype=np.float32, shape=(nnz,))
    indices = np.lib.format.open_memmap(staging / "indices.npy", mode="w+", dtype=np.int32, shape=(nnz,))
    next_pos = indptr[:-1].copy()
    for path in tqdm(chunk_files, desc="bm25: scoring", unit="chunk", disable=not progress):
        with np.load(path) as z:
            docs_arr, terms_arr, tf = z["docs"], z["terms"], z["tf"]
        scores = idf_arr[terms_arr] * tf_component(tf, lens_arr[docs_arr], avg_len, cfg.k1, cfg.b, cfg.method)
        # Scatter into column (term) order. Chunks arrive in doc order and the sort is stable,
        # so each column's doc ids stay ascending, as scipy's CSC would have them.
        order = np.argsort(terms_arr, kind="stable")
        t_sorted = terms_arr[order]
        rank_in_term = np.arange(len(order)) - np.searchsorted(t_sorted, t_sorted, side="left")
        pos = next_pos[t_sorted] + rank_in_term
        data[pos] = scores[order]
        indices[pos] = docs_arr[order]
        next_pos[: len(df)] += np.bincount(terms_arr, minlength=len(df))
        path.unlink()

    import bm25s

    model = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method, backend="numpy")
    model.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}
    model.vocab_dict = vocab
    model.nonoccurrence_array = None
    model.save(out_dir, show_progress=False)
    del data, indices, model
    shutil.rmtree(staging)
    stats = {
        "num_docs": n_docs,
        "vocab_size": n_cols,
        "nnz": nnz,
        "avg_doc_len": avg_len,
        "k1": cfg.k1,
        "b": cfg.b,
        "method": cfg.method,
        "stemmer": cfg.stemmer,
        "stopwords": cfg.stopwords,
        "token_pattern": TOKEN_PATTERN,
    }
    (out_dir / META_FILE).write_text(json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------- searching


class BM25Ranker:
    """Top-k passage indices for queries, scored by a bm25s index on disk (memory-mapped)."""

    name = "bm25"

    def __init__(self, index_dir: str | os.PathLike, threads: int = 0, backend: str = "auto"):
        import bm25s

        index_dir = Path(index_dir)
        meta_path = index_dir / META_FILE
        if not meta_path.is_file():
            raise IndexFormatError(f"{index_dir} is not a searchr1 BM25 index (no {META_FILE})")
        self.meta = json.loads(meta_path.read_text())
        if backend == "auto":
            backend = "numba" if bm25s.NUMBA_AVAILABLE else "numpy"
        try:
            self.model = bm25s.BM25.load(index_dir, mmap=True, show_progress=False, backend=backend)
        except (OSError, ValueError, KeyError) as e:
            raise IndexFormatError(f"cannot load the BM25 index in {index_dir}: {e}") from None
        self.num_docs = int(self.model.scores["num_docs"])
        self.tokenizer = BM25Tokenizer(self.meta["stemmer"], self.meta["stopwords"])
        self.vocab: dict[str, int] = self.model.vocab_dict
        self.vocab.pop("", None)  # an empty query is answered with no hits, below
        self.threads = threads

    def query_term_ids(self, query: str) -> list[int]:
        return [self.vocab[t] for t in self.tokenizer.terms(query) if t in self.vocab]

    def rank(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = empty_ranking(len(queries), k)
        k_eff = min(k, self.num_docs)
        term_ids = [self.query_term_ids(q) for q in queries]
        rows = [i for i, t in enumerate(term_ids) if t]
        if not rows or k_eff == 0:
            return ids, scores
        res = self.model.retrieve(
            [term_ids[i] for i in rows], k=k_eff, sorted=True, show_progress=False, n_threads=self.threads
        )
        got_ids = np.asarray(res.documents, dtype=np.int64)
        got_scores = np.asarray(res.scores, dtype=np.float32)
        # A passage that shares no term with the query scores 0: it is not a match.
        no_match = got_scores <= 0
        got_ids[no_match] = -1
        got_scores[no_match] = -np.inf
        ids[rows, :k_eff] = got_ids
        scores[rows, :k_eff] = got_scores
        return ids, scores

