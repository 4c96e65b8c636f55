"""`build_index` on real passages: reuse, extension, refusal to mix corpora, malformed lines, hybrid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from itest_helpers import QUESTIONS, head_lines, snapshot

from searchr1.errors import CorpusFormatError, IndexFormatError
from searchr1.retrieval.build import build_index, read_index_meta
from searchr1.retrieval.local import open_index
from searchr1.retrieval.settings import IndexConfig, RetrieverConfig

N_SMALL = 40


@pytest.fixture()
def small_corpus(tmp_path, wiki_path):
    return head_lines(wiki_path, N_SMALL, tmp_path / "small.jsonl")


def _cfg(corpus, out, methods, **kw) -> IndexConfig:
    cfg = IndexConfig(corpus=str(corpus), dir=str(out), methods=list(methods), **kw)
    cfg.dense.encoder.max_length = 64
    cfg.dense.encoder.device = "cpu"
    return cfg


def _search(index, method, queries=QUESTIONS, k=5):
    retriever = open_index(RetrieverConfig(index=str(index), method=method, device="cpu"))
    try:
        return [[(h.doc_id, h.score) for h in row] for row in retriever.search(queries, k)]
    finally:
        retriever.close()


def test_building_twice_reuses_the_index(tmp_path, small_corpus):
    out = tmp_path / "idx"
    first = build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)
    before = snapshot(out)
    second = build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)
    assert second == first  # same stats, including the build time of the first build
    assert snapshot(out) == before  # no file rewritten


def test_adding_dense_to_a_bm25_index_keeps_bm25(tmp_path, small_corpus):
    out = tmp_path / "idx"
    build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)
    bm25_files = {k: v for k, v in snapshot(out).items() if k.startswith("bm25/") or k.startswith("docs.")}
    bm25_meta = read_index_meta(out)["methods"]["bm25"]
    bm25_results = _search(out, "bm25")
    assert open_index(RetrieverConfig(index=str(out))).method == "bm25"

    meta = build_index(_cfg(small_corpus, out, ["dense"]), progress=False)
    assert set(meta["methods"]) == {"bm25", "dense"}
    assert meta["methods"]["bm25"] == bm25_meta
    assert meta["methods"]["dense"]["num_docs"] == N_SMALL
    after = snapshot(out)
    assert {k: after[k] for k in bm25_files} == bm25_files  # bm25 and the passage store untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    assert _search(out, "bm25") == bm25_results
    retriever = open_index(RetrieverConfig(index=str(out), device="cpu"))
    try:
        assert retriever.method == "hybrid"  # auto picks hybrid once both exist
        assert all(len(row) == 5 for row in retriever.search(QUESTIONS, 5))
    finally:
        retriever.close()

    # Asking for both again rebuilds nothing.
    again = build_index(_cfg(small_corpus, out, ["bm25", "dense"]), progress=False)
    assert again == read_index_meta(out)
    assert snapshot(out) == after


def test_another_corpus_into_the_same_dir_needs_overwrite(tmp_path, wiki_path, small_corpus):
    out = tmp_path / "idx"
    build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)
    before = snapshot(out)
    other = head_lines(wiki_path, 25, tmp_path / "other.jsonl", start=N_SMALL)
    with pytest.raises(IndexFormatError, match="another corpus") as err:
        build_index(_cfg(other, out, ["bm25"]), progress=False)
    assert "index.overwrite=true" in str(err.value)
    assert snapshot(out) == before  # the old index is intact
    assert _search(out, "bm25", k=1)

    # An edited corpus file counts as another corpus too.
    with open(small_corpus, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "extra", "title": "Extra", "text": "an appended passage"}) + "\n")
    with pytest.raises(IndexFormatError, match="another corpus"):
        build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)

    meta = build_index(_cfg(other, out, ["bm25"], overwrite=True), progress=False)
    assert meta["num_docs"] == 25
    other_ids = {json.loads(line)["id"] for line in other.read_text().splitlines()}
    assert {doc for row in _search(out, "bm25") for doc, _ in row} <= other_ids
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_refuses_to_write_into_a_directory_that_is_not_an_index(tmp_path, small_corpus):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(IndexFormatError, match="not a searchr1 index"):
        build_index(_cfg(small_corpus, out, ["bm25"]), progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def _corpus_with_bad_lines(tmp_path, wiki_path):
    lines = head_lines(wiki_path, 10, tmp_path / "ten.jsonl").read_bytes().splitlines(keepends=True)
    lines[3] = b'{"id": "broken", "contents": "\\"Cut off\\"\\nin the mid\n'  # line 4: invalid JSON
    lines[6] = b'{"title": "No id", "text": "a passage without an id"}\n'  # line 7: no id
    lines[8] = b'{"id": "latin1", "title": "Caf\xe9", "text": "not UTF-8"}\n'  # line 9: bad bytes
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    return path, lines


def test_malformed_corpus_line_is_named(tmp_path, wiki_path):
    corpus, _ = _corpus_with_bad_lines(tmp_path, wiki_path)
    out = tmp_path / "idx"
    with pytest.raises(CorpusFormatError) as err:
        build_index(_cfg(corpus, out, ["bm25"]), progress=False)
    message = str(err.value)
    assert f"{corpus}:4:" in message
    assert "invalid JSON" in message and "index.on_bad_line=skip" in message
    # Nothing half-built is left behind.
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "ten.jsonl"]


def test_skipping_malformed_lines_builds_and_records_them(tmp_path, wiki_path):
    corpus, lines = _corpus_with_bad_lines(tmp_path, wiki_path)
    out = tmp_path / "idx"
    meta = build_index(_cfg(corpus, out, ["bm25"], on_bad_line="skip"), progress=False)
    assert meta["num_docs"] == 7 and meta["skipped_lines"] == 3
    skipped = [json.loads(line) for line in (out / "skipped_lines.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["line"] for s in skipped] == [4, 7, 9]
    assert "invalid JSON" in skipped[0]["reason"]
    assert "id" in skipped[1]["reason"]
    assert "UTF-8" in skipped[2]["reason"]
    assert skipped[0]["raw"] == lines[3].decode().rstrip("\n")
    good_ids = [json.loads(lines[i])["id"] for i in range(10) if i not in (3, 6, 8)]
    retriever = open_index(RetrieverConfig(index=str(out)))
    try:
        assert [retriever.store[i].doc_id for i in range(len(retriever.store))] == good_ids
        assert retriever.search(["who wrote hamlet"], 3)[0]
    finally:
        retriever.close()


# ----------------------------------------------------------------------------- hybrid over the shared index


def test_hybrid_fuses_bm25_and_dense(wiki_index):
    depth = 50
    cfg = RetrieverConfig(index=str(wiki_index), device="cpu", fusion_depth=depth)
    hybrid = open_index(cfg)
    assert hybrid.method == "hybrid"
    try:
        bm25_ranker, dense_ranker = hybrid.ranker.rankers
        bm25_ids = bm25_ranker.rank(QUESTIONS, depth)[0]
        dense_ids = dense_ranker.rank(QUESTIONS, depth)[0]
        ids, scores = hybrid.ranker.rank(QUESTIONS, 5)
        hits = hybrid.search(QUESTIONS, 5)
        differs_from_bm25 = differs_from_dense = 0
        for q, row in enumerate(hits):
            assert len(row) == 5 and len({h.doc_id for h in row}) == 5
            assert [h.doc_id for h in row] == [hybrid.store[int(i)].doc_id for i in ids[q]]
            top = int(ids[q, 0])
            assert top in set(bm25_ids[q].tolist()) | set(dense_ids[q].tolist())
            # the fused score is the reciprocal rank fusion of the two rankings
            expected = sum(1 / (60 + lst[q].tolist().index(top) + 1) for lst in (bm25_ids, dense_ids)
                           if top in lst[q].tolist())
            assert scores[q, 0] == pytest.approx(expected, rel=1e-6)
            assert row[0].score == pytest.approx(expected, rel=1e-6)
            differs_from_bm25 += ids[q].tolist() != bm25_ids[q, :5].tolist()
            differs_from_dense += ids[q].tolist() != dense_ids[q, :5].tolist()
        # fusion is neither of its inputs alone
        assert differs_from_bm25 > 0 and differs_from_dense > 0
        assert np.all(np.diff(scores, axis=1) <= 0)
    finally:
        hybrid.close()
