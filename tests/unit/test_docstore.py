"""searchr1.retrieval.docstore: memory-mapped passage store."""

from __future__ import annotations

import numpy as np
import pytest

from searchr1.errors import IndexFormatError
from searchr1.retrieval.corpus import Passage
from searchr1.retrieval.docstore import DOCS_FILE, OFFSETS_FILE, DocStore, write_docstore

PASSAGES = [
    Passage("a", "Alpha", "first passage"),
    Passage("b", "Bêta", "zweite – 日本語"),
    Passage("c", "", "no title", raw_contents="no title"),
    Passage("d", "Delta", "line one\nline two"),
]


@pytest.fixture
def store(tmp_path):
    assert write_docstore(iter(PASSAGES), tmp_path) == len(PASSAGES)
    s = DocStore(tmp_path)
    yield s
    s.close()


def test_round_trip_every_passage(store):
    assert [store[i] for i in range(len(PASSAGES))] == PASSAGES


def test_raw_contents_survive(store):
    assert store[2].raw_contents == "no title"
    assert store[0].raw_contents is None


def test_len(store):
    assert len(store) == 4


def test_iteration_order(store):
    assert list(store) == PASSAGES


def test_get_many_in_requested_order_with_repeats(store):
    assert store.get_many([3, 0, 3]) == [PASSAGES[3], PASSAGES[0], PASSAGES[3]]


def test_get_many_accepts_numpy_indices(store):
    assert store.get_many(np.array([1, 2], dtype=np.int64)) == PASSAGES[1:3]


def test_negative_index_counts_from_end(store):
    assert store[-1] == PASSAGES[-1]


@pytest.mark.parametrize("i", [4, 100, -5])
def test_out_of_range_index(store, i):
    with pytest.raises(IndexError, match="out of range for 4 passages"):
        store[i]


def test_iter_batches(store):
    assert store.iter_batches(3).__next__() == PASSAGES[:3]
    assert [len(b) for b in store.iter_batches(3)] == [3, 1]


def test_offsets_file_layout(tmp_path):
    write_docstore(PASSAGES, tmp_path)
    offsets = np.load(tmp_path / OFFSETS_FILE)
    data = (tmp_path / DOCS_FILE).read_bytes()
    assert offsets.dtype == np.uint64
    assert offsets[0] == 0 and offsets[-1] == len(data)
    lines = data.split(b"\n")[:-1]
    assert list(np.diff(offsets)) == [len(line) + 1 for line in lines]


def test_empty_store(tmp_path):
    assert write_docstore([], tmp_path) == 0
    s = DocStore(tmp_path)
    assert len(s) == 0
    assert list(s) == []
    with pytest.raises(IndexError):
        s[0]
    s.close()


def test_missing_store(tmp_path):
    with pytest.raises(IndexFormatError, match="no passage store"):
        DocStore(tmp_path)


def test_offsets_not_matching_docs_file(tmp_path):
    write_docstore(PASSAGES, tmp_path)
    with open(tmp_path / DOCS_FILE, "ab") as f:  # e.g. an interrupted rewrite
        f.write(b'{"id": "extra"}\n')
    with pytest.raises(IndexFormatError, match="offsets do not match"):
        DocStore(tmp_path)


def test_truncated_docs_file(tmp_path):
    write_docstore(PASSAGES, tmp_path)
    docs = tmp_path / DOCS_FILE
    docs.write_bytes(docs.read_bytes()[:-10])
    with pytest.raises(IndexFormatError, match="rebuild it"):
        DocStore(tmp_path)


def test_garbage_offsets_file(tmp_path):
    write_docstore(PASSAGES, tmp_path)
    (tmp_path / OFFSETS_FILE).write_bytes(b"this is not a numpy file")
    with pytest.raises(IndexFormatError, match="corrupted"):
        DocStore(tmp_path)


def test_offsets_with_wrong_shape(tmp_path):
    write_docstore(PASSAGES, tmp_path)
    size = (tmp_path / DOCS_FILE).stat().st_size
    np.save(tmp_path / OFFSETS_FILE, np.array([[0, size]], dtype=np.uint64))
    with pytest.raises(IndexFormatError):
        DocStore(tmp_path)
