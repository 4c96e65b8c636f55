"""The real server (`python -m searchr1 serve`, a subprocess) spoken to as Search-R1 speaks to it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from itest_helpers import MAX_BODY_BYTES, MAX_QUERIES_PER_REQUEST, search_r1_passages2string

JSON = {"Content-Type": "application/json"}


def retrieve(url, **kwargs) -> requests.Response:
    return requests.post(url + "/retrieve", timeout=60, **kwargs)


def assert_still_serving(url):
    r = retrieve(url, json={"queries": ["who wrote hamlet"], "topk": 2, "return_scores": True})
    assert r.status_code == 200, r.text
    assert len(r.json()["result"][0]) == 2


def test_search_r1_request_and_response_shape(server_url, wiki_rows):
    # Exactly what Search-R1's generation.py sends.
    payload = {"queries": ["who wrote hamlet", "capital of france"], "topk": 3, "return_scores": True}
    response = requests.post(server_url + "/retrieve", json=payload)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"result"}
    result = body["result"]
    assert isinstance(result, list) and len(result) == 2
    for row in result:
        assert len(row) == 3
        scores = []
        for item in row:
            assert set(item) == {"document", "score"}
            assert isinstance(item["score"], float)
            scores.append(item["score"])
            doc = item["document"]
            assert {"id", "contents"} <= set(doc)
            original = wiki_rows[doc["id"]]
            assert doc["contents"] == f'"{original["title"]}"\n{original["text"]}'
            assert (doc["title"], doc["text"]) == (original["title"], original["text"])
        assert scores == sorted(scores, reverse=True)
    # Search-R1 turns a row into its prompt text like this.
    text = search_r1_passages2string(result[0])
    first = result[0][0]["document"]
    assert text.startswith(f'Doc 1(Title: "{first["title"]}") {first["text"]}\n')
    assert text.count("\nDoc ") == 2


def test_return_scores_false_gives_bare_documents(server_url):
    body = retrieve(server_url, json={"queries": ["capital of france"], "topk": 3, "return_scores": False}).json()
    with_scores = retrieve(server_url, json={"queries": ["capital of france"], "topk": 3,
                                             "return_scores": True}).json()
    row = body["result"][0]
    assert len(row) == 3
    assert all("score" not in doc and "document" not in doc and {"id", "contents"} <= set(doc) for doc in row)
    assert row == [item["document"] for item in with_scores["result"][0]]


def test_topk_defaults_to_the_servers_topk(server_url):
    body = retrieve(server_url, json={"queries": ["history of rome", "what is propaganda"]}).json()
    assert [len(row) for row in body["result"]] == [3, 3]  # retriever.topk default; return_scores false
    assert all("contents" in doc for row in body["result"] for doc in row)
    body = retrieve(server_url, json={"queries": ["history of rome"], "topk": 7}).json()
    assert len(body["result"][0]) == 7


def test_health(server_url, wiki_index):
    health = requests.get(server_url + "/health", timeout=30)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["method"] == "hybrid" and body["num_docs"] == 300 and body["index"] == str(wiki_index)
    assert body["default_topk"] == 3
    assert body["limits"]["max_queries_per_request"] == MAX_QUERIES_PER_REQUEST
    assert body["limits"]["max_body_bytes"] == MAX_BODY_BYTES
    assert {"mean_queries_per_call", "search_calls", "queries", "requests"} <= set(body["batching"])


BAD_REQUESTS = {
    "malformed JSON": dict(data=b'{"queries": ["who wrote', headers=JSON),
    "empty body": dict(data=b"", headers=JSON),
    "empty query list": dict(json={"queries": [], "topk": 3}),
    "topk 0": dict(json={"queries": ["a"], "topk": 0}),
    "negative topk": dict(json={"queries": ["a"], "topk": -3}),
    "huge topk": dict(json={"queries": ["a"], "topk": 10**6}),
    "fractional topk": dict(json={"queries": ["a"], "topk": 2.5}),
    "100 KB query": dict(json={"queries": ["x" * 100_000], "topk": 3}),
    "non-UTF-8 body": dict(data=b'{"queries": ["caf\xe9 \xff\xfe"], "topk": 3}', headers=JSON),
    "queries not a list": dict(json={"queries": "who wrote hamlet", "topk": 3}),
    "queries are ints": dict(json={"queries": [1, 2], "topk": 3}),
    "queries hold null": dict(json={"queries": [None], "topk": 3}),
    "missing queries": dict(json={"topk": 3, "return_scores": True}),
    "body is a list": dict(json=[{"queries": ["a"]}]),
    "return_scores not a bool": dict(json={"queries": ["a"], "return_scores": "maybe"}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_gets_4xx_json_and_server_keeps_serving(server_url, case):
    response = retrieve(server_url, **BAD_REQUESTS[case])
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert "detail" in body and body["detail"]
    assert len(response.content) < 10_000  # the input is not echoed back
    assert_still_serving(server_url)


def test_body_over_the_size_limit_is_413(server_url):
    big = {"queries": ["word " * (MAX_BODY_BYTES // 5 + 10)], "topk": 3}
    response = retrieve(server_url, json=big)
    assert response.status_code == 413
    assert "server.max_body_bytes" in response.json()["detail"]
    assert_still_serving(server_url)


def test_chunked_body_over_the_size_limit_is_413(server_url):
    """No Content-Length header: the limit is enforced while the body streams in."""
    def chunks():
        yield b'{"queries": ["'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"y" * 65536
        yield b'"]}'

    response = retrieve(server_url, data=chunks(), headers=JSON)
    assert response.status_code == 413
    assert "detail" in response.json()
    assert_still_serving(server_url)


def test_too_many_queries_is_413(server_url):
    ok = retrieve(server_url, json={"queries": ["q"] * MAX_QUERIES_PER_REQUEST, "topk": 1})
    assert ok.status_code == 200 and len(ok.json()["result"]) == MAX_QUERIES_PER_REQUEST
    response = retrieve(server_url, json={"queries": ["q"] * (MAX_QUERIES_PER_REQUEST + 1), "topk": 1})
    assert response.status_code == 413
    assert "server.max_queries_per_request" in response.json()["detail"]
    assert_still_serving(server_url)


def test_unknown_route_and_wrong_method_are_4xx(server_url):
    assert requests.get(server_url + "/retrieve", timeout=30).status_code == 405
    assert requests.get(server_url + "/nothing-here", timeout=30).status_code == 404
    assert_still_serving(server_url)


def test_odd_but_valid_queries_are_answered(server_url):
    queries = ["", "   ", "?!", "ünïcödé 東京 🚀", "x" * 4096]
    response = retrieve(server_url, json={"queries": queries, "topk": 2, "return_scores": True})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["result"]) == len(queries)


def test_concurrent_clients_are_micro_batched(server_url):
    """64 clients hitting the server at once all get their own answers, in merged search calls."""
    clients, rounds = 64, 4
    before = requests.get(server_url + "/health", timeout=30).json()["batching"]
    barrier = threading.Barrier(clients)

    def client(i: int):
        with requests.Session() as session:
            barrier.wait(timeout=60)  # everyone sends at the same moment
            out = []
            for j in range(rounds):
                query = f"question {i} round {j}: who wrote hamlet"
                r = session.post(server_url + "/retrieve", timeout=120,
                                 json={"queries": [query], "topk": 3, "return_scores": True})
                out.append((r.status_code, len(r.json()["result"]), len(r.json()["result"][0])))
            return out

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    assert all(x == (200, 1, 3) for per_client in results for x in per_client)

    after = requests.get(server_url + "/health", timeout=30).json()["batching"]
    queries = after["queries"] - before["queries"]
    calls = after["search_calls"] - before["search_calls"]
    assert queries == clients * rounds
    # Merging happened: fewer search calls than queries (typically 5-10 calls for 256 queries).
    assert calls < queries / 2, (calls, queries)
    assert after["mean_queries_per_call"] > 1
    assert after["largest_batch"] > 1
    assert after["failed_requests"] == 0


def test_each_concurrent_client_gets_its_own_results(server_url):
    """Merged batches are split back correctly: every answer is the one for its own query."""
    queries = ["who wrote hamlet", "capital of france", "history of rome", "what is propaganda",
               "jack kerouac novels", "steam locomotive museum", "geography of qatar", "capitalism"]
    expected = {q: retrieve(server_url, json={"queries": [q], "topk": 3}).json()["result"][0] for q in queries}
    work = queries * 8
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda q: retrieve(server_url, json={"queries": [q], "topk": 3}).json(), work))
    for q, answer in zip(work, answers):
        assert [d["id"] for d in answer["result"][0]] == [d["id"] for d in expected[q]]


def test_health_counts_errors(server_url):
    before = requests.get(server_url + "/health", timeout=30).json()["http"]
    retrieve(server_url, json={"queries": []})
    after = requests.get(server_url + "/health", timeout=30).json()["http"]
    assert after["errors_4xx"] == before["errors_4xx"] + 1
    assert after["errors_5xx"] == 0


def test_without_batching_the_answers_are_the_same(wiki_index):
    """server.batching=false (Search-R1's one-search-per-request behaviour) answers identically."""
    from searchr1.retrieval.process import ServerProcess

    payload = {"queries": ["who wrote hamlet", "capital of france"], "topk": 3, "return_scores": True}
    overrides = [f"retriever.index={wiki_index}", "retriever.method=bm25", "server.port=0"]
    with ServerProcess(overrides) as batched, ServerProcess(overrides + ["server.batching=false"]) as plain:
        assert requests.get(plain + "/health", timeout=30).json()["batching"] is None
        assert retrieve(plain, json=payload).json() == retrieve(batched, json=payload).json()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: retrieve(plain, json=payload).status_code, range(32)))
        assert codes == [200] * 32
        assert retrieve(plain, json={"queries": []}).status_code == 422


def test_server_logged_no_traceback(server):
    """After all the bad input above, the server process is alive and logged no exception."""
    assert server.proc.poll() is None
    assert not [line for line in server.output if "Traceback" in line or "Exception" in line]
    assert requests.get(server.url + "/health", timeout=30).json()["http"]["errors_5xx"] == 0


# ----------------------------------------------------------------------------- guards (issue 24), in process


import httpx  # noqa: E402

from searchr1.errors import ConfigError  # noqa: E402
from searchr1.retrieval.base import Hit  # noqa: E402
from searchr1.retrieval.client import HttpRetriever  # noqa: E402
from searchr1.retrieval.server import BackgroundServer  # noqa: E402
from searchr1.retrieval.settings import ServerConfig  # noqa: E402


class Fatal(BaseException):
    """Escapes the batcher's error handling: its task dies."""


class Backend:
    """Answers one hit per query; blocks while `gate` is closed; 'die' kills the batching task and
    'leak' fails with a message holding a path."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def search(self, queries, k):
        self.started.set()
        assert self.gate.wait(10)
        if "die" in queries:
            raise Fatal()
        if "leak" in queries:
            raise RuntimeError("cannot open /srv/secret/index.faiss")
        return [[Hit(q, q, q, 1.0)] * k for q in queries]


def post(url, queries, topk=1, **kw):
    return httpx.post(url + "/retrieve", json={"queries": queries, "topk": topk}, timeout=10, **kw)


def test_a_full_queue_answers_503_with_retry_after_and_the_server_serves_on():
    backend = Backend()
    backend.gate.clear()
    with BackgroundServer(backend, ServerConfig(port=0, max_queue_queries=2)) as url, ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, url, ["a"])  # being searched: blocks on the gate
        assert backend.started.wait(10)
        queued = [pool.submit(post, url, [q]) for q in ("b", "c")]
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["queued_queries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(url, ["d"])
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "server.max_queue_queries" in refused.json()["detail"]
        backend.gate.set()
        assert [f.result().status_code for f in (first, *queued)] == [200, 200, 200]
        assert post(url, ["e"]).status_code == 200
        stats = httpx.get(url + "/health").json()["batching"]
        assert (stats["rejected_full"], stats["max_queued_queries"]) == (1, 2)


def test_health_fails_once_the_batching_task_died():
    with BackgroundServer(Backend(), ServerConfig(port=0)) as url:
        assert httpx.get(url + "/health").status_code == 200
        assert post(url, ["die"]).status_code == 503
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert post(url, ["a"]).status_code == 503  # nothing would answer it
        with pytest.raises(Exception, match="not healthy"):
            HttpRetriever(url).health()


def test_answers_larger_than_max_result_hits_are_413():
    with BackgroundServer(Backend(), ServerConfig(port=0, max_result_hits=10)) as url:
        assert post(url, ["a", "b"], topk=5).status_code == 200
        r = post(url, ["a", "b", "c"], topk=4)
        assert r.status_code == 413 and "server.max_result_hits" in r.json()["detail"]


def test_error_replies_do_not_echo_exception_text_or_paths():
    with BackgroundServer(Backend(), ServerConfig(port=0)) as url:
        r = post(url, ["leak"])
        assert r.status_code == 500
        assert "/srv" not in r.text and "RuntimeError" not in r.text and "secret" not in r.text


def test_a_token_is_required_when_configured(monkeypatch):
    monkeypatch.setenv("SEARCHR1_TEST_TOKEN", "tok-123")
    with BackgroundServer(Backend(), ServerConfig(port=0, token="SEARCHR1_TEST_TOKEN")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "tok-123"}):
            r = post(url, ["a"], headers=headers)
            assert r.status_code == 401 and "tok-123" not in r.text
        assert httpx.get(url + "/health").status_code == 401
        assert post(url, ["a"], headers={"Authorization": "Bearer tok-123"}).status_code == 200
        with HttpRetriever(url, token="tok-123", learn_limits=True) as client:
            assert client.search(["a"], 1)[0][0].doc_id == "a"
            assert client.max_query_chars == 4096  # /health answered it


def test_a_token_variable_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv("SEARCHR1_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="server.token=SEARCHR1_UNSET_TOKEN"):
        BackgroundServer(Backend(), ServerConfig(port=0, token="SEARCHR1_UNSET_TOKEN"))
