"""searchr1.index_memory (`searchr1 index memory`): index sizes from parameters, checked against hand-computed bytes.

Byte counts follow faiss's serialisation (fourcc 4 + index header 33 bytes; every vector is a
size_t length then its data) and our own file formats (.npy header 128 bytes).
"""

from __future__ import annotations

import math

import pytest

from searchr1.errors import ConfigError
from searchr1 import index_memory as mem
from searchr1.cli import main
from searchr1.index_memory import (
    IndexBytes,
    UnsupportedIndexError,
    bm25_matrix_bytes,
    bm25_vocab_bytes,
    docstore_bytes,
    embeddings_bytes,
    faiss_index_bytes,
    flat_bytes,
    format_memory_table,
    heaps_vocab,
    hnsw_expected_slots,
    hnsw_graph_bytes,
    hnsw_level_probas,
    memory_table,
    pq_bytes,
    pq_code_size,
    resolve_spec,
    sq_bytes,
    sq_code_size,
)
from searchr1.retrieval.settings import DenseConfig

N21 = 21_015_324


# ----------------------------------------------------------------------------- flat, SQ, PQ


def test_flat_is_four_bytes_per_float_plus_header():
    assert flat_bytes(1000, 64) == 45 + 4 * 1000 * 64 == 256_045


def test_search_r1_flat_e5_index_needs_64_6_gb():
    b = faiss_index_bytes("Flat", N21, 768).file_bytes
    assert b == 45 + 21_015_324 * 768 * 4 == 64_559_075_373
    assert round(b / 1e9, 2) == 64.56 and round(b / 2**30, 2) == 60.13


def test_flat_matches_files_we_built():
    # benchmarks/.cache: wiki18_mini (23,336 x 384) and synthetic 1M x 384 flat indexes
    assert flat_bytes(23_336, 384) == 35_844_141
    assert flat_bytes(1_000_000, 384) == 1_536_000_045


@pytest.mark.parametrize("qtype, d, code", [("SQ8", 64, 64), ("SQ6", 64, 48), ("SQ4", 63, 32), ("SQfp16", 64, 128)])
def test_sq_code_sizes(qtype, d, code):
    assert sq_code_size(qtype, d) == code


def test_sq8_codes_plus_per_dimension_ranges():
    # header 37 + sq struct (4+4+4+8+8 + 8 + 2*64 floats) + codes vector (8 + 1000*64)
    assert sq_bytes(1000, 64, "SQ8") == 37 + (28 + 8 + 512) + 8 + 64_000 == 64_593


def test_sq_fp16_has_no_trained_table():
    assert sq_bytes(1000, 64, "SQfp16") == 37 + 36 + 8 + 128_000 == 128_081


def test_sq4_rounds_odd_dimension_up():
    assert sq_bytes(1000, 63, "SQ4") == 37 + (36 + 4 * 126) + 8 + 32 * 1000 == 32_585


@pytest.mark.parametrize("m, nbits, size", [(96, 8, 96), (64, 4, 32), (5, 4, 3), (16, 8, 16)])
def test_pq_code_size(m, nbits, size):
    assert pq_code_size(m, nbits) == size


def test_pq_codes_plus_codebooks():
    # header 37 + pq (d, M, nbits + centroids 2^8 x 64 floats) + codes + search params 9
    assert pq_bytes(1000, 64, 16, 8) == 37 + (24 + 8 + 4 * 64 * 256) + 8 + 16_000 + 9 == 81_622


def test_pq_m_must_divide_dim():
    with pytest.raises(UnsupportedIndexError, match="dividing"):
        pq_bytes(10, 64, 10)


# ----------------------------------------------------------------------------- HNSW


def test_hnsw_levels_are_geometric_with_ratio_one_over_m():
    probas = hnsw_level_probas(32)
    assert len(probas) == 6  # 32^-6 * (31/32) < 1e-9 <= 32^-5 * (31/32)
    for level, p in enumerate(probas):
        assert p == pytest.approx(32.0**-level * (1 - 1 / 32), rel=1e-12)


@pytest.mark.parametrize("M", [4, 16, 32, 64])
def test_hnsw_expected_slots_is_2m_plus_m_over_m_minus_1(M):
    assert hnsw_expected_slots(M) == pytest.approx(2 * M + M / (M - 1), rel=1e-7)


def test_hnsw_graph_bytes_by_hand():
    slots = round(1000 * hnsw_expected_slots(32))
    assert slots == 65_032
    expected = (8 + 6 * 8) + (8 + 7 * 4) + (8 + 4 * 1000) + (8 + 8 * 1001) + (8 + 4 * slots) + 20
    assert hnsw_graph_bytes(1000, 32) == expected == 272_272


def test_hnsw_flat_is_graph_plus_flat_storage():
    ib = faiss_index_bytes("HNSW32,Flat", 1000, 64)
    assert ib.file_bytes == 37 + 272_272 + 256_045
    assert faiss_index_bytes("HNSW32", 1000, 64) == dataclass_replace_spec(ib, "HNSW32")
    assert faiss_index_bytes("HNSW", 1000, 64).file_bytes == ib.file_bytes  # faiss's default M is 32


def dataclass_replace_spec(ib: IndexBytes, spec: str) -> IndexBytes:
    return IndexBytes(spec, ib.n, ib.dim, ib.parts, ib.search_tables)


def test_hnsw_matches_a_1m_index_we_built():
    # benchmarks/.cache/synthetic-1000k-hnsw: HNSW32,Flat over 1M x 384, 1,808,129,506 bytes;
    # the only randomness is each vector's level, so the prediction is within a few hundred bytes
    assert abs(faiss_index_bytes("HNSW32,Flat", 1_000_000, 384).file_bytes - 1_808_129_506) < 2_000


def test_hnsw_sq8_and_pq_storage():
    assert faiss_index_bytes("HNSW32,SQ8", 1000, 64).file_bytes == 37 + 272_272 + 64_593
    assert faiss_index_bytes("HNSW32_PQ16", 1000, 64).file_bytes == 37 + 272_272 + 81_622


# ----------------------------------------------------------------------------- IVF

IVF_HEADER = 37 + 8 + 8 + 9  # index header, nlist, nprobe, direct map (type + empty vector)
QUANT_100x64 = 45 + 4 * 100 * 64  # IndexFlat of 100 centroids
LISTS_100 = 4 + 8 + 8 + 4 + 8 + 8 * 100  # fourcc, nlist, code_size, "full", sizes vector


def test_ivfpq_codes_ids_centroids_codebooks():
    pq_tables = 1 + 8 + (24 + 8 + 4 * 64 * 256)  # by_residual, code_size, pq
    lists = LISTS_100 + 10_000 * (8 + 8)
    ib = faiss_index_bytes("IVF100,PQ8", 10_000, 64)
    assert ib.file_bytes == IVF_HEADER + QUANT_100x64 + pq_tables + lists == 252_116
    assert ib.search_tables == 0  # inner product: no precomputed table
    assert faiss_index_bytes("IVF100,PQ8x8", 10_000, 64).file_bytes == 252_116


def test_ivfsq8_and_ivfflat():
    sq_tables = (28 + 8 + 4 * 128) + 8 + 1  # sq struct, code_size, by_residual
    assert faiss_index_bytes("IVF100,SQ8", 10_000, 64).file_bytes == (
        IVF_HEADER + QUANT_100x64 + sq_tables + LISTS_100 + 10_000 * (64 + 8)
    ) == 747_096
    assert faiss_index_bytes("IVF100,Flat", 10_000, 64).file_bytes == (
        IVF_HEADER + QUANT_100x64 + LISTS_100 + 10_000 * (256 + 8)
    ) == 2_666_539


def test_ivf_few_vectors_use_the_sparse_size_table():
    # 10 vectors in 100 lists: at most 10 non-empty, so (list, size) pairs are stored
    lists = 4 + 8 + 8 + 4 + 8 + 16 * 10 + 10 * (256 + 8)
    assert faiss_index_bytes("IVF100,Flat", 10, 64).file_bytes == IVF_HEADER + QUANT_100x64 + lists


def test_ivf_nlist_suffixes_and_hnsw_quantizer():
    assert faiss_index_bytes("IVF1k,Flat", 0, 8).file_bytes == faiss_index_bytes("IVF1024,Flat", 0, 8).file_bytes
    plain = faiss_index_bytes("IVF100,Flat", 10_000, 64).file_bytes
    hnsw_q = faiss_index_bytes("IVF100_HNSW16,Flat", 10_000, 64).file_bytes
    assert hnsw_q - plain == 37 + hnsw_graph_bytes(100, 16)


def test_l2_ivfpq_precomputed_table_counted_in_ram_only():
    ib = faiss_index_bytes("IVF100,PQ8", 10_000, 64, metric="l2")
    assert ib.search_tables == 4 * 100 * 8 * 256
    assert ib.ram_bytes == ib.file_bytes + 819_200
    # 65536 x 64 x 256 floats = 4 GiB > faiss's 2 GiB limit: not built
    assert faiss_index_bytes("IVF65536,PQ64", 1000, 768, metric="l2").search_tables == 0


def test_ivfpq_21m_is_about_n_times_code_plus_id():
    ib = faiss_index_bytes("IVF65536,PQ64", N21, 768)
    per_vector = N21 * (64 + 8)
    fixed = 4 * 65536 * 768 + 4 * 256 * 768
    assert per_vector + fixed < ib.file_bytes < per_vector + fixed + 65536 * 8 + 1000


# ----------------------------------------------------------------------------- aliases, errors


def test_aliases_resolve_like_the_index_builder():
    assert resolve_spec("flat", N21, 768) == "Flat"
    assert resolve_spec("fp16", N21, 768) == "SQfp16"
    assert resolve_spec("sq8", N21, 768) == "SQ8"
    assert resolve_spec("hnsw", N21, 768) == "HNSW32,Flat"
    assert resolve_spec("HNSW", N21, 768, DenseConfig(hnsw_m=64)) == "HNSW64,Flat"
    # the wiki18-e5-ivfpq preset: pq_m 96, train_size 500k; nlist = int(4*sqrt(n))
    assert resolve_spec("ivfpq", N21, 768, DenseConfig(pq_m=96, train_size=500_000)) == "IVF18336,PQ96x8"
    assert resolve_spec("IVF4096,PQ64", N21, 768) == "IVF4096,PQ64"


@pytest.mark.parametrize("spec", [
    "OPQ16,IVF100,PQ16", "PCA32,Flat", "IVF100,PQ16x4fs", "IDMap,Flat", "LSH", "IVF100,RQ8x8",
    "HNSW32,IVF100,Flat", "IVF100", "SQ3", "flat,",
])
def test_unmodelled_specs_are_a_clear_config_error(spec):
    with pytest.raises(ConfigError, match="cannot model the memory of faiss index"):
        faiss_index_bytes(spec, 1000, 64)


def test_bad_arguments():
    with pytest.raises(ValueError):
        faiss_index_bytes("Flat", -1, 64)
    with pytest.raises(ValueError):
        faiss_index_bytes("Flat", 1, 64, metric="cosine")
    with pytest.raises(UnsupportedIndexError):
        hnsw_level_probas(1)
    with pytest.raises(UnsupportedIndexError, match="must divide"):
        resolve_spec("ivfpq", 100_000, 100, DenseConfig(pq_m=12))


# ----------------------------------------------------------------------------- BM25, passages, embeddings


def test_bm25_matrix_matches_the_wiki18_mini_index():
    # benchmarks/.cache/wiki18_mini/bm25: nnz 1,261,583, 70,597 columns; data + indices + indptr files
    assert bm25_matrix_bytes(23_336, 1_261_583 / 23_336, 70_597) == 2 * 5_046_460 + 564_912


def test_bm25_matrix_by_hand():
    assert bm25_matrix_bytes(1000, 50.0, 9) == 384 + 8 * 50_000 + 8 * 10


def test_heaps_law_reproduces_its_calibration_point_and_grows_sublinearly():
    assert abs(heaps_vocab(23_336) - 70_596) < 10
    v21 = heaps_vocab(N21)
    assert v21 == round(70_596 * (N21 * mem.BM25_TERMS_PER_DOC / 1_635_251) ** 0.59)
    assert 3_000_000 < v21 < 5_000_000
    assert heaps_vocab(0) == 0


def test_vocab_ram():
    assert bm25_vocab_bytes(1000) == 112_000
    assert bm25_vocab_bytes(1000, per_term=50) == 50_000


def test_docstore_matches_the_wiki18_mini_store():
    # docs.jsonl 15,872,118 bytes + docs.offsets.npy 186,824 bytes
    assert docstore_bytes(23_336, 15_872_118 / 23_336) == 15_872_118 + 186_824
    assert docstore_bytes(10, 100) == 1000 + 88 + 128


def test_embeddings_file():
    assert embeddings_bytes(23_336, 384) == 17_922_176  # wiki18_mini's embeddings.f16.npy
    assert embeddings_bytes(10, 4, bytes_per_value=4) == 160 + 128


# ----------------------------------------------------------------------------- table


def test_memory_table_rows_and_markdown():
    rows = memory_table(N21, 768, ["flat", "flat@384", "IVF65536,PQ64"])
    assert [r.component for r in rows] == [
        "faiss index", "faiss index", "faiss index", "BM25 score matrix", "BM25 vocabulary",
        "passage store", "saved embeddings",
    ]
    assert rows[0].bytes == 64_559_075_373 and "d=768" in rows[0].config
    assert rows[1].bytes == 45 + N21 * 384 * 4 and "d=384" in rows[1].config
    assert rows[-1].bytes == 2 * N21 * 768 + 128
    text = format_memory_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| component |") and len(lines) == 2 + len(rows)
    assert "| 64.56 | 60.13 |" in lines[2]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_memory_table_options():
    rows = memory_table(1000, 64, ["SQ8"], bm25=False, docstore=False, embeddings=False)
    assert len(rows) == 1 and rows[0].bytes == 64_593 and rows[0].formula == "n·d + 8·d"
    rows = memory_table(1000, 64, [], bm25_vocab_size=9, bm25_nnz_per_doc=50, avg_passage_bytes=100)
    assert rows[0].bytes == 384 + 400_000 + 80 and rows[1].bytes == 1008
    assert rows[2].bytes == 100_000 + 8 * 1001 + 128
    with pytest.raises(ConfigError, match="SPEC@DIM"):
        memory_table(10, 8, ["Flat@x"])


def test_default_table_covers_every_alias():
    rows = memory_table(N21, 768)
    configs = " ".join(r.config for r in rows)
    for alias in ("flat", "fp16", "sq8", "hnsw", "ivfpq"):
        assert f"{alias} = " in configs
    sizes = {r.config.split(",")[0]: r.bytes for r in rows}
    assert sizes["ivfpq = IVF18336"] < sizes["sq8 = SQ8"] < sizes["fp16 = SQfp16"] < sizes["flat = Flat"]
    assert sizes["flat = Flat"] < sizes["hnsw = HNSW32"]


def test_cli_prints_the_table(capsys):
    assert main(["index", "memory", "--n", "21015324", "--dim", "768", "--extra", "flat@384"]) == 0
    out = capsys.readouterr().out
    assert "21,015,324" in out and "| 64.56 | 60.13 |" in out and "d=384" in out
    assert main(["index", "memory", "--index", "OPQ16,Flat"]) == 2
    assert "cannot model" in capsys.readouterr().err


def test_cli_reads_the_dense_settings(capsys):
    # the hnsw alias takes index.dense.hnsw_m; a configured factory string joins the default table
    args = ["index", "memory", "--n", "1000", "--dim", "64", "index.dense.hnsw_m=16", "index.dense.index_type=PQ8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "hnsw = HNSW16,Flat, d=64" in out and "| PQ8, d=64 |" in out
    assert main(["index", "memory", "--n", "-1"]) == 2
    assert "n >= 0" in capsys.readouterr().err


def test_formulas_are_documented_for_each_kind():
    for spec in ("Flat", "SQfp16", "SQ8", "SQ4", "PQ16", "HNSW32,Flat", "IVF10,Flat", "IVF10,SQ8", "IVF10,PQ8"):
        assert mem.index_formula(spec), spec
    assert math.isclose(hnsw_expected_slots(2), 6.0, rel_tol=1e-6)  # 2M + M/(M-1) = 4 + 2
