"""Memory of a retrieval server, computed from index parameters (no index needs to exist).

    searchr1 index memory --n 21015324 --dim 768 --extra flat@384

prints, as a Markdown table, the bytes of every piece a `searchr1 serve` process holds for a
corpus of n passages: the faiss index (each type), the BM25 index, the passage store and the
saved embeddings. Faiss sizes follow faiss's own storage layout (faiss/impl/index_write.cpp,
HNSW.cpp, IndexIVFPQ.cpp of the faiss source; checked against faiss 1.15.1): `read_index` loads
a file into vectors of exactly the sizes written, so the file size is the index's memory once
loaded, to within a few hundred bytes of C++ object headers. The functions below predict that file size byte for byte
(tests check them against `faiss.serialize_index` of real indexes).

Notation: n vectors of dimension d; 4 bytes per float32, 8 per int64 id.

  Flat             4*n*d                                     (21M x 768: 64.6 GB)
  SQfp16 / SQbf16  2*n*d
  SQ8              n*d + 8*d  (per-dimension min and range, float32)
  SQ6 / SQ4        n*ceil(6d/8) + 8*d,  n*ceil(d/2) + 8*d
  PQ{m}x{b}        n*ceil(m*b/8) + 4*2^b*d  (codes + codebooks: 2^b centroids of d/m floats per sub-quantiser)
  HNSW{M},<codes>  <codes> + n*(4*E[slots] + 4 + 8): each vector has a fixed neighbour table of
                   int32 slots, 2M on level 0 and M on each upper level it reaches, plus its
                   level (int32) and offset (size_t). Levels follow faiss's set_default_probas:
                   P(level = l) = M^-l * (1 - 1/M), so E[level] = 1/(M-1) and
                   E[slots] = 2M + M/(M-1)  (HNSW32: 65.03 slots, 272 bytes of graph per vector).
  IVF{L},<codes>   n*(code_size + 8) + 4*L*d + <codes' trained tables>: inverted lists store each
                   vector's code and its int64 id; the coarse quantizer holds L centroids
                   (IVF{L}_HNSW{M} adds an HNSW graph over them). IVF-SQ stores residual codes
                   (same size), IVF-PQ code_size = ceil(m*b/8).
                   L2-metric IVF-PQ also builds, in RAM only, a precomputed table of
                   4*L*m*2^b bytes when that is at most 2 GiB; inner product (our indexes) never does.

The other pieces (our own formats, see bm25.py and docstore.py):

  BM25 scores      bm25s CSC matrix: data float32 + indices int32 per nonzero (nnz = n * unique
                   terms per passage), indptr int64 per vocabulary term; memory-mapped, so it sits
                   on disk and in the page cache, not in the process.
  BM25 vocabulary  vocab.index.json on disk; loaded into a Python dict (about 112 bytes a term).
                   The vocabulary of n passages follows Heaps' law fitted on wiki18_mini.
  Passage store    docs.jsonl (one JSON line per passage) + offsets uint64[n+1]; memory-mapped.
  Embeddings       float16 [n, d] .npy kept for rebuilding other index types; never loaded by a server.

Calibration constants (measured on wiki18_mini, 23,336 real passages of the wiki-18 corpus, with
our tokenizer and on-disk formats) are module constants below; every one is a parameter.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from searchr1.errors import ConfigError, SearchR1Error

WIKI18_PASSAGES = 21_015_324  # passages of Search-R1's wiki-18 corpus (DPR's psgs_w100)

# Measured on wiki18_mini (23,336 passages; benchmarks/.cache/wiki18_mini):
AVG_PASSAGE_BYTES = 680.15  # docs.jsonl bytes per passage: 15,872,118 / 23,336
BM25_NNZ_PER_DOC = 54.06  # distinct terms per passage (stemmed, stop words removed): 1,261,583 / 23,336
BM25_TERMS_PER_DOC = 70.07  # term occurrences per passage (its avg_doc_len)
HEAPS_V0, HEAPS_T0, HEAPS_BETA = 70_596, 1_635_251, 0.59  # V = V0 * (T / T0)^beta, fitted on 1k..23k passages
VOCAB_RAM_BYTES_PER_TERM = 112.0  # the same vocabulary as a Python dict (tracemalloc)

NPY_HEADER = 128  # a 1-D or 2-D .npy file header
PRECOMPUTED_TABLE_MAX_BYTES = 1 << 31  # faiss's precomputed_table_max_bytes

# faiss serialisation: fourcc (4) + index header: d int32, ntotal int64, 2 dummies int64,
# is_trained bool, metric_type int32 (metric_arg only for exotic metrics).
_INDEX_HEADER = 4 + 4 + 8 + 8 + 8 + 1 + 4
_VEC = 8  # every std::vector is written as a size_t length, then its data

_SQ_TYPES = {  # name -> (code size for dimension d, float32 values in `trained`)
    "SQ8": (lambda d: d, lambda d: 2 * d),
    "SQ6": (lambda d: (6 * d + 7) // 8, lambda d: 2 * d),
    "SQ4": (lambda d: (d + 1) // 2, lambda d: 2 * d),
    "SQfp16": (lambda d: 2 * d, lambda d: 0),
    "SQbf16": (lambda d: 2 * d, lambda d: 0),
    "SQ8_direct": (lambda d: d, lambda d: 0),
    "SQ8_direct_signed": (lambda d: d, lambda d: 0),
}
_ALIASES = ("flat", "fp16", "sq8", "hnsw", "ivfpq")
SUPPORTED = (
    "the aliases flat, fp16, sq8, hnsw, ivfpq, and faiss factory strings of the forms Flat, "
    "SQ8 / SQ6 / SQ4 / SQfp16 / SQbf16, PQ{m}[x{bits}], HNSW{M}[,Flat|,SQ..|,PQ..], "
    "IVF{nlist}[_HNSW{M}],{Flat|SQ..|PQ{m}[x{bits}]}"
)


class UnsupportedIndexError(ConfigError):
    """An index type whose memory this module cannot model."""


# ----------------------------------------------------------------------------- faiss pieces


def flat_bytes(n: int, d: int) -> int:
    """IndexFlat: float32 vectors, 4*n*d bytes (+ 45 bytes of header)."""
    return _INDEX_HEADER + _VEC + 4 * n * d


def sq_code_size(qtype: str, d: int) -> int:
    """Bytes per vector of a scalar quantizer: SQ8 d, SQ6 ceil(6d/8), SQ4 ceil(d/2), SQfp16 2d."""
    return _sq(qtype)[0](d)


def _sq(qtype: str):
    try:
        return _SQ_TYPES[qtype]
    except KeyError:
        raise UnsupportedIndexError(f"unknown scalar quantizer {qtype!r} (known: {', '.join(_SQ_TYPES)})") from None


def _sq_struct(qtype: str, d: int) -> int:
    # qtype, rangestat (enums), rangestat_arg (float), d, code_size (size_t), trained (vector<float>)
    return 4 + 4 + 4 + 8 + 8 + _VEC + 4 * _sq(qtype)[1](d)


def sq_bytes(n: int, d: int, qtype: str = "SQ8") -> int:
    """IndexScalarQuantizer: n*code_size + trained ranges (SQ8/6/4: 2*d floats; fp16: none)."""
    return _INDEX_HEADER + _sq_struct(qtype, d) + _VEC + n * sq_code_size(qtype, d)


def pq_code_size(m: int, nbits: int = 8) -> int:
    """Bytes per vector of a product quantizer: ceil(m*nbits/8)."""
    return (m * nbits + 7) // 8


def _pq_struct(d: int, m: int, nbits: int) -> int:
    if m < 1 or d % m:
        raise UnsupportedIndexError(f"PQ{m} needs m >= 1 dividing the dimension {d}")
    if not 1 <= nbits <= 16:
        raise UnsupportedIndexError(f"PQ with {nbits} bits per code is not a faiss PQ")
    # d, M, nbits (size_t) + centroids: M sub-quantisers x 2^nbits centroids x d/M floats
    return 3 * 8 + _VEC + 4 * d * (1 << nbits)


def pq_bytes(n: int, d: int, m: int, nbits: int = 8) -> int:
    """IndexPQ: n*ceil(m*nbits/8) codes + 4*2^nbits*d bytes of codebooks."""
    # ... + search_type int32, encode_signs bool, polysemous_ht int32
    return _INDEX_HEADER + _pq_struct(d, m, nbits) + _VEC + n * pq_code_size(m, nbits) + 9


def hnsw_level_probas(M: int) -> list[float]:
    """faiss HNSW::set_default_probas(M, 1/ln M): P(level l) = exp(-l ln M)(1 - 1/M) = M^-l (1 - 1/M),
    levels kept while that is >= 1e-9."""
    if M < 2:
        raise UnsupportedIndexError(f"HNSW needs M >= 2, got {M}")
    level_mult = 1.0 / math.log(M)
    probas = []
    level = 0
    while True:
        p = math.exp(-level / level_mult) * (1 - math.exp(-1 / level_mult))
        if p < 1e-9:
            return probas
        probas.append(p)
        level += 1


def hnsw_expected_slots(M: int) -> float:
    """Expected neighbour slots per vector: 2M on level 0, M per upper level, so
    E = 2M + M*E[level] = 2M + M/(M-1) (exactly, before faiss's 1e-9 truncation of the levels)."""
    probas = hnsw_level_probas(M)
    cum = [2 * M + M * level for level in range(len(probas))]  # slots of a vector whose top level is `level`
    # faiss's random_level gives the leftover probability (1 - sum) to the last level
    return sum(p * c for p, c in zip(probas, cum)) + (1.0 - sum(probas)) * cum[-1]


def hnsw_graph_bytes(n: int, M: int) -> int:
    """The HNSW graph alone: n*(4*E[slots] + 4 + 8) bytes: int32 neighbour slots, an int32 level
    and a size_t offset per vector (+ small tables)."""
    levels = len(hnsw_level_probas(M))
    slots = round(n * hnsw_expected_slots(M))
    return (
        _VEC + 8 * levels  # assign_probas (double)
        + _VEC + 4 * (levels + 1)  # cum_nneighbor_per_level (int)
        + _VEC + 4 * n  # levels (int)
        + _VEC + 8 * (n + 1)  # offsets (size_t)
        + _VEC + 4 * slots  # neighbors (int32)
        + 5 * 4  # entry_point, max_level, efConstruction, efSearch, upper_beam
    )


def _invlists_bytes(n: int, nlist: int, code_size: int) -> int:
    """ArrayInvertedLists: per vector its code and its int64 id; list sizes as size_t."""
    nonempty = min(n, nlist)  # k-means lists are all non-empty once n >= nlist
    sizes = 8 * nlist if nonempty > nlist // 2 else 16 * nonempty  # "full" or "sprs" size table
    return 4 + 8 + 8 + 4 + _VEC + sizes + n * (code_size + 8)


@dataclass(frozen=True)
class IndexBytes:
    """Predicted size of one faiss index. `parts` sum to the file size (= memory once loaded);
    `search_tables` is memory built at load time that is not in the file (L2 IVF-PQ only)."""

    spec: str
    n: int
    dim: int
    parts: tuple[tuple[str, int], ...]
    search_tables: int = 0

    @property
    def file_bytes(self) -> int:
        return sum(b for _, b in self.parts)

    @property
    def ram_bytes(self) -> int:
        return self.file_bytes + self.search_tables


_RE_IVF = re.compile(r"IVF([0-9]+)([kM]?)(?:_HNSW([0-9]*))?,(.+)")
_RE_HNSW = re.compile(r"HNSW([0-9]*)(?:[,_](.*))?")
_RE_PQ = re.compile(r"PQ([0-9]+)(?:x([0-9]+))?(np)?")


def _unsupported(spec: str, why: str = "") -> UnsupportedIndexError:
    return UnsupportedIndexError(
        f"cannot model the memory of faiss index {spec!r}{': ' + why if why else ''}; supported are {SUPPORTED}"
    )


def _codes(code: str, spec: str, d: int) -> tuple[str, int, int, int | None]:
    """A code description -> (kind, code_size, trained-table bytes in an IVF, PQ m or None)."""
    if code in ("Flat", ""):
        return "flat", 4 * d, 0, None
    if code in _SQ_TYPES:
        return code, sq_code_size(code, d), _sq_struct(code, d) + 8 + 1, None  # + code_size, by_residual
    pq = _RE_PQ.fullmatch(code)
    if pq:
        m, nbits = int(pq.group(1)), int(pq.group(2) or 8)
        return "pq", pq_code_size(m, nbits), 1 + 8 + _pq_struct(d, m, nbits), m  # + by_residual, code_size
    raise _unsupported(spec, f"unknown code {code!r}")


def faiss_index_bytes(spec: str, n: int, dim: int, metric: str = "ip") -> IndexBytes:
    """Bytes of the faiss index built by `faiss.index_factory(dim, spec)` holding n vectors.

    `spec` is a factory string (see SUPPORTED); use `resolve_spec` first for our aliases.
    `metric` ("ip" as our indexes, or "l2") only matters for IVF-PQ's precomputed table.
    Raises UnsupportedIndexError (a ConfigError) for a string it cannot model.
    """
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    s = spec.strip()
    if s == "Flat":
        return IndexBytes(s, n, dim, (("vectors (float32)", flat_bytes(n, dim)),))
    if s in _SQ_TYPES:
        return IndexBytes(s, n, dim, (("codes + ranges", sq_bytes(n, dim, s)),))
    pq = _RE_PQ.fullmatch(s)
    if pq:
        m, nbits = int(pq.group(1)), int(pq.group(2) or 8)
        return IndexBytes(s, n, dim, (("codes + codebooks", pq_bytes(n, dim, m, nbits)),))
    hnsw = _RE_HNSW.fullmatch(s)
    if hnsw:
        M = int(hnsw.group(1) or 32)
        storage = faiss_index_bytes(hnsw.group(2) or "Flat", n, dim, metric)
        if len(storage.parts) != 1 or storage.spec.startswith(("HNSW", "IVF")):
            raise _unsupported(s, "HNSW storage must be Flat, SQ.. or PQ..")
        return IndexBytes(s, n, dim, (
            (f"HNSW{M} graph", _INDEX_HEADER + hnsw_graph_bytes(n, M)),
            (f"storage ({storage.spec})", storage.file_bytes),
        ))
    ivf = _RE_IVF.fullmatch(s)
    if ivf:
        nlist = int(ivf.group(1)) * {"": 1, "k": 1024, "M": 1024 * 1024}[ivf.group(2)]
        if nlist < 1:
            raise _unsupported(s, "nlist must be positive")
        if ivf.group(3) is not None:
            qM = int(ivf.group(3) or 32)
            quantizer = _INDEX_HEADER + hnsw_graph_bytes(nlist, qM) + flat_bytes(nlist, dim)
            qname = f"coarse quantizer (HNSW{qM} over {nlist} centroids)"
        else:
            quantizer = flat_bytes(nlist, dim)
            qname = f"coarse quantizer ({nlist} centroids)"
        kind, code_size, tables, pq_m = _codes(ivf.group(4), s, dim)
        header = _INDEX_HEADER + 8 + 8 + 1 + _VEC  # nlist, nprobe, direct map (none)
        parts = [
            (f"inverted lists ({code_size} B code + 8 B id per vector)", _invlists_bytes(n, nlist, code_size)),
            (qname, quantizer),
            ("header + trained tables", header + tables),
        ]
        search = 0
        if kind == "pq" and metric == "l2":
            ksub = 1 << int(_RE_PQ.fullmatch(ivf.group(4)).group(2) or 8)
            table = 4 * nlist * pq_m * ksub
            search = table if table <= PRECOMPUTED_TABLE_MAX_BYTES else 0
        return IndexBytes(s, n, dim, tuple(parts), search)
    raise _unsupported(s)


def resolve_spec(index: str, n: int, dim: int, dense=None) -> str:
    """Our `dense.index_type` aliases (flat, fp16, sq8, hnsw, ivfpq) -> the factory string that
    `searchr1 index build` would use for n vectors of dimension dim (dense.factory_string, with
    `dense`'s hnsw_m / ivf_nlist / pq_m / train_size); any other string is returned unchanged."""
    if index.lower() not in _ALIASES:
        return index
    from searchr1.retrieval.dense import factory_string
    from searchr1.retrieval.settings import DenseConfig

    cfg = dataclasses.replace(dense or DenseConfig(), index_type=index.lower())
    try:
        return factory_string(cfg, dim, n)
    except SearchR1Error as e:
        raise UnsupportedIndexError(str(e)) from None


def index_formula(spec: str) -> str:
    """The formula, in n and d, of a factory string's size (for the table)."""
    if spec == "Flat":
        return "4·n·d"
    if spec in ("SQfp16", "SQbf16"):
        return "2·n·d"
    if spec in _SQ_TYPES:
        return "n·d + 8·d" if spec.startswith("SQ8") else f"n·⌈{spec[2]}·d/8⌉ + 8·d"
    if _RE_PQ.fullmatch(spec):
        return "n·⌈m·b/8⌉ + 4·2^b·d"
    h = _RE_HNSW.fullmatch(spec)
    if h:
        inner = index_formula(h.group(2) or "Flat")
        return f"{inner} + n·(4·(2M + M/(M−1)) + 12)"
    ivf = _RE_IVF.fullmatch(spec)
    if ivf:
        code = ivf.group(4)
        per = {"Flat": "4·d", "SQ8": "d", "SQ6": "⌈6·d/8⌉", "SQ4": "⌈d/2⌉", "SQfp16": "2·d", "SQbf16": "2·d"}.get(
            code, "⌈m·b/8⌉" if code.startswith("PQ") else "code")
        extra = " + 4·2^b·d" if code.startswith("PQ") else (" + 8·d" if code in ("SQ8", "SQ6", "SQ4") else "")
        graph = " + HNSW graph of the centroids" if ivf.group(3) is not None else ""
        return f"n·({per} + 8) + 4·nlist·d{extra}{graph}"
    return ""


# ----------------------------------------------------------------------------- other pieces


def heaps_vocab(n_docs: int, terms_per_doc: float = BM25_TERMS_PER_DOC) -> int:
    """BM25 vocabulary size by Heaps' law, V = V0 * (T/T0)^beta with T = n_docs * terms_per_doc
    term occurrences, fitted on wiki18_mini (V0 = 70,596 terms at T0 = 1,635,251, beta = 0.59).
    An extrapolation: for 21M passages it gives about 3.9M terms."""
    if n_docs <= 0:
        return 0
    return int(round(HEAPS_V0 * (n_docs * terms_per_doc / HEAPS_T0) ** HEAPS_BETA))


def bm25_matrix_bytes(n_docs: int, nnz_per_doc: float = BM25_NNZ_PER_DOC, vocab_size: int | None = None) -> int:
    """bm25s's score matrix on disk: data float32 + indices int32 per nonzero, indptr int64 per
    term (+1), three .npy headers: 8*nnz + 8*(V+1) + 384 bytes, nnz = round(n_docs*nnz_per_doc)."""
    vocab = heaps_vocab(n_docs) if vocab_size is None else vocab_size
    nnz = round(n_docs * nnz_per_doc)
    return 3 * NPY_HEADER + 4 * nnz + 4 * nnz + 8 * (vocab + 1)


def bm25_vocab_bytes(vocab_size: int, per_term: float = VOCAB_RAM_BYTES_PER_TERM) -> int:
    """The vocabulary once loaded (a Python dict term -> column): vocab_size * per_term bytes."""
    return int(round(vocab_size * per_term))


def docstore_bytes(n_docs: int, avg_passage_bytes: float = AVG_PASSAGE_BYTES) -> int:
    """docs.jsonl + docs.offsets.npy: n*avg_passage_bytes + 8*(n+1) + 128 bytes."""
    return int(round(n_docs * avg_passage_bytes)) + 8 * (n_docs + 1) + NPY_HEADER


def embeddings_bytes(n: int, d: int, bytes_per_value: int = 2) -> int:
    """The saved passage embeddings (embeddings.f16.npy): 2*n*d + 128 bytes (float16)."""
    return bytes_per_value * n * d + NPY_HEADER


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class MemoryRow:
    component: str  # what it is
    config: str  # its parameters
    bytes: int
    lives: str  # where it is while serving
    formula: str


DEFAULT_INDEXES = ("flat", "fp16", "sq8", "hnsw", "HNSW32,SQ8", "IVF65536,SQ8", "ivfpq", "IVF65536,PQ64")


def _split_dim(item: str, dim: int) -> tuple[str, int]:
    """'SPEC@DIM' -> (SPEC, DIM); plain 'SPEC' -> (SPEC, dim)."""
    spec, sep, d = item.rpartition("@")
    if not sep:
        return item, dim
    try:
        return spec, int(d)
    except ValueError:
        raise ConfigError(f"{item!r}: expected SPEC or SPEC@DIM with an integer DIM") from None


def memory_table(
    n: int,
    dim: int,
    indexes: Sequence[str] = DEFAULT_INDEXES,
    *,
    dense=None,
    metric: str = "ip",
    bm25: bool = True,
    bm25_nnz_per_doc: float = BM25_NNZ_PER_DOC,
    bm25_vocab_size: int | None = None,
    docstore: bool = True,
    avg_passage_bytes: float = AVG_PASSAGE_BYTES,
    embeddings: bool = True,
) -> list[MemoryRow]:
    """Rows for the faiss indexes in `indexes` (aliases, factory strings, or 'SPEC@DIM' for another
    dimension), then BM25, the passage store and the saved embeddings. `dense` (a DenseConfig)
    supplies hnsw_m / ivf_nlist / pq_m / train_size for the aliases; defaults are DenseConfig's."""
    rows = []
    for item in indexes:
        name, d = _split_dim(item, dim)
        spec = resolve_spec(name, n, d, dense)
        ib = faiss_index_bytes(spec, n, d, metric)
        config = f"{spec}, d={d}" if name == spec else f"{name} = {spec}, d={d}"
        extra = f" (+{_gb(ib.search_tables)} GB search tables)" if ib.search_tables else ""
        rows.append(MemoryRow("faiss index", config, ib.ram_bytes, "RAM" + extra, index_formula(spec)))
    if bm25:
        vocab = heaps_vocab(n) if bm25_vocab_size is None else bm25_vocab_size
        rows.append(MemoryRow(
            "BM25 score matrix", f"{bm25_nnz_per_doc:g} terms/passage, {vocab:,} terms",
            bm25_matrix_bytes(n, bm25_nnz_per_doc, vocab), "disk, memory-mapped", "8·nnz + 8·V",
        ))
        rows.append(MemoryRow(
            "BM25 vocabulary", f"{vocab:,} terms (Heaps' law)" if bm25_vocab_size is None else f"{vocab:,} terms",
            bm25_vocab_bytes(vocab), "RAM (Python dict)", f"{VOCAB_RAM_BYTES_PER_TERM:g}·V",
        ))
    if docstore:
        rows.append(MemoryRow(
            "passage store", f"{avg_passage_bytes:g} B/passage", docstore_bytes(n, avg_passage_bytes),
            "disk, memory-mapped", "n·(bytes/passage + 8)",
        ))
    if embeddings:
        rows.append(MemoryRow(
            "saved embeddings", f"float16, d={dim}", embeddings_bytes(n, dim), "disk only (rebuilds)", "2·n·d",
        ))
    return rows


def _gb(b: int) -> str:
    return f"{b / 1e9:,.2f}"


def format_memory_table(rows: Sequence[MemoryRow]) -> str:
    """Markdown table: component, configuration, GB (10^9), GiB (2^30), where it lives, formula."""
    lines = [
        "| component | configuration | GB | GiB | while serving | formula |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.component} | {r.config} | {_gb(r.bytes)} | {r.bytes / 2**30:,.2f} | {r.lives} | {r.formula} |"
        )
    return "\n".join(lines)
