"""The in-process retriever and the HTTP client over the same index are interchangeable."""

from __future__ import annotations

import pytest
import requests

from itest_helpers import QUESTIONS, search_r1_passages2string

from searchr1.retrieval import HttpRetriever, IndexRetriever, Retriever, open_index, open_retriever
from searchr1.retrieval.process import ServerProcess
from searchr1.retrieval.settings import RetrieverConfig

QUERIES = QUESTIONS + ["ünïcödé 東京", "who wrote hamlet"]  # a duplicate query too


@pytest.fixture(scope="module", params=["hybrid", "dense", "bm25"])
def served(request, server, wiki_index):
    """(method, url) of a real server per retrieval method; hybrid is the shared session server."""
    if request.param == "hybrid":
        yield "hybrid", server.url
        return
    with ServerProcess([f"retriever.index={wiki_index}", f"retriever.method={request.param}",
                        "retriever.device=cpu", "server.port=0"]) as url:
        yield request.param, url


@pytest.fixture(scope="module")
def local(served, wiki_index):
    method, _ = served
    retriever = open_index(RetrieverConfig(index=str(wiki_index), method=method, device="cpu"))
    yield retriever
    retriever.close()


def _as_search_r1_row(hits) -> list[dict]:
    return [{"document": {"id": h.doc_id, "contents": h.contents}, "score": h.score} for h in hits]


@pytest.mark.parametrize("k", [1, 5])
def test_same_passages_and_scores(served, local, k):
    method, url = served
    assert local.method == method
    with HttpRetriever(url, retries=0) as http:
        assert isinstance(http, Retriever) and isinstance(local, Retriever)
        remote_rows = http.search(QUERIES, k)
    local_rows = local.search(QUERIES, k)
    assert len(remote_rows) == len(local_rows) == len(QUERIES)
    for query, remote, here in zip(QUERIES, remote_rows, local_rows):
        assert [h.doc_id for h in remote] == [h.doc_id for h in here], query
        assert [(h.title, h.text, h.contents) for h in remote] == [(h.title, h.text, h.contents) for h in here]
        assert [h.score for h in remote] == pytest.approx([h.score for h in here], rel=1e-5, abs=1e-5)
    # the duplicated query gets the same answer
    assert [h.doc_id for h in remote_rows[0]] == [h.doc_id for h in remote_rows[-1]]


def test_client_chunks_large_query_lists(served, local):
    """A client limit below the request size splits the queries; the answers do not change."""
    _, url = served
    queries = QUERIES * 2
    with HttpRetriever(url, retries=0, max_queries_per_request=5) as http:
        remote = http.search(queries, 3)
        assert http.attempts == -(-len(queries) // 5)
    here = local.search(queries, 3)
    assert [[h.doc_id for h in row] for row in remote] == [[h.doc_id for h in row] for row in here]


def test_search_r1_passage_formatting_is_the_same_from_both(served, local):
    _, url = served
    raw = requests.post(url + "/retrieve", json={"queries": QUERIES[:4], "topk": 3, "return_scores": True},
                        timeout=60).json()["result"]
    with HttpRetriever(url, retries=0) as http:
        remote = http.search(QUERIES[:4], 3)
    here = local.search(QUERIES[:4], 3)
    for raw_row, remote_row, local_row in zip(raw, remote, here):
        expected = search_r1_passages2string(raw_row)
        assert search_r1_passages2string(_as_search_r1_row(remote_row)) == expected
        assert search_r1_passages2string(_as_search_r1_row(local_row)) == expected
        assert expected.startswith(f'Doc 1(Title: "{local_row[0].title}") {local_row[0].text}')


def test_open_retriever_picks_by_config(served, wiki_index):
    method, url = served
    http = open_retriever(RetrieverConfig(url=url, retries=0))
    try:
        assert isinstance(http, HttpRetriever)
        assert http.health()["method"] == method
    finally:
        http.close()
    if method == "bm25":  # cheap to open; the others are covered by the `local` fixture
        here = open_retriever(RetrieverConfig(index=str(wiki_index), method="bm25"))
        assert isinstance(here, IndexRetriever)
        here.close()
