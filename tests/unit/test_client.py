"""searchr1.retrieval.client: Search-R1 response parsing and HttpRetriever over httpx.MockTransport."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from searchr1.errors import RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.base import Hit
from searchr1.retrieval.client import HttpRetriever, parse_hit, retrieve_url

URL = "http://retr.test:8000/retrieve"


# ----------------------------------------------------------------------------- retrieve_url


@pytest.mark.parametrize(
    "given",
    ["http://retr.test:8000", "http://retr.test:8000/", "http://retr.test:8000/retrieve",
     "retr.test:8000", " http://retr.test:8000/retrieve/ "],
)
def test_retrieve_url_normalises(given):
    assert retrieve_url(given) == URL


def test_retrieve_url_keeps_https_and_path_prefix():
    assert retrieve_url("https://h/api/") == "https://h/api/retrieve"


# ----------------------------------------------------------------------------- parse_hit


def test_parse_hit_with_score_and_contents_only():
    hit = parse_hit({"document": {"id": "12", "contents": '"Paris"\nCapital of France.'}, "score": 3.5})
    assert hit == Hit("12", "Paris", "Capital of France.", 3.5)
    assert hit.raw_contents is None


def test_parse_hit_bare_document_has_nan_score():
    hit = parse_hit({"id": 7, "contents": '"Rome"\nCapital of Italy.'})
    assert (hit.doc_id, hit.title, hit.text) == ("7", "Rome", "Capital of Italy.")
    assert math.isnan(hit.score)


def test_parse_hit_bare_document_ignores_a_score_key():
    # Without the {"document": ...} wrapper there is no score, whatever keys the document has.
    assert math.isnan(parse_hit({"id": "1", "contents": '"T"\nx', "score": 9}).score)


def test_parse_hit_prefers_title_and_text():
    hit = parse_hit({"document": {"id": "1", "title": "T", "text": "body", "contents": '"T"\nbody'}, "score": 1})
    assert (hit.title, hit.text, hit.raw_contents) == ("T", "body", None)


def test_parse_hit_keeps_non_canonical_contents():
    hit = parse_hit({"document": {"id": "1", "contents": "no title line"}, "score": 1})
    assert (hit.title, hit.text) == ("", "no title line")
    assert hit.contents == "no title line"


def test_parse_hit_missing_id_becomes_empty_string():
    assert parse_hit({"contents": '"T"\nx'}).doc_id == ""


@pytest.mark.parametrize(
    "item, reason",
    [
        ("a string", "expected an object"),
        ({"document": "x", "score": 1}, "'document' is not an object"),
        ({"document": {"id": "1"}, "score": 1}, "neither 'contents' nor 'text'"),
    ],
)
def test_parse_hit_rejects_malformed(item, reason):
    with pytest.raises(ValueError, match=reason):
        parse_hit(item)


# ----------------------------------------------------------------------------- HttpRetriever


def doc(i: int) -> dict:
    return {"document": {"id": str(i), "contents": f'"T{i}"\ntext {i}'}, "score": float(i)}


class Server:
    """A scripted /retrieve endpoint: `responses` are consumed one per attempt; records requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        r = self.responses.pop(0) if self.responses else "echo"
        if isinstance(r, Exception):
            raise r
        if r == "echo":  # one hit per query, id = position in this request
            return httpx.Response(200, json={"result": [[doc(i)] for i, _ in enumerate(body["queries"])]})
        return r


def retriever(handler, **kw) -> HttpRetriever:
    kw.setdefault("backoff_s", 0.0)
    r = HttpRetriever("http://retr.test:8000", **kw)
    r._client.close()
    r._client = httpx.Client(transport=httpx.MockTransport(handler))
    return r


def test_search_sends_search_r1_payload_and_parses_rows():
    server = Server(httpx.Response(200, json={"result": [[doc(1), doc(2)], []]}))
    r = retriever(server)
    hits = r.search(["q1", "q2"], k=2)
    assert server.requests == [{"queries": ["q1", "q2"], "topk": 2, "return_scores": True}]
    assert hits == [[Hit("1", "T1", "text 1", 1.0), Hit("2", "T2", "text 2", 2.0)], []]
    assert r.attempts == 1


def test_retries_on_503_then_succeeds():
    server = Server(httpx.Response(503, json={"detail": "busy"}), httpx.Response(503, text="busy"), "echo")
    r = retriever(server, retries=3)
    hits = r.search(["q"], k=1)
    assert [h.doc_id for h in hits[0]] == ["0"]
    assert len(server.requests) == 3
    assert r.attempts == 3


@pytest.mark.parametrize("status", [429, 500, 502, 504])
def test_other_retryable_statuses(status):
    server = Server(httpx.Response(status), "echo")
    r = retriever(server, retries=1)
    assert len(r.search(["q"], 1)) == 1
    assert len(server.requests) == 2


def test_no_retry_on_422():
    server = Server(httpx.Response(422, json={"detail": "topk too large"}))
    r = retriever(server, retries=3)
    with pytest.raises(RetrieverRequestError) as e:
        r.search(["q"], k=1)
    assert len(server.requests) == 1
    assert "HTTP 422" in str(e.value) and "topk too large" in str(e.value)


def test_request_error_with_non_object_json_body():
    # The error body is valid JSON but not an object: its text is shown instead of a crash.
    server = Server(httpx.Response(400, json=["bad", "topk"]))
    with pytest.raises(RetrieverRequestError, match=r'HTTP 400: \["bad",\s*"topk"\]'):
        retriever(server).search(["q"], k=1)


def test_connect_error_every_attempt_is_unavailable_after_retries_plus_one():
    def refuse(request):
        refuse.calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    refuse.calls = 0
    r = retriever(refuse, retries=2)
    with pytest.raises(RetrieverUnavailableError) as e:
        r.search(["q"], k=1)
    assert refuse.calls == 3
    assert r.attempts == 3
    assert URL in str(e.value)
    assert "3 attempts" in str(e.value)
    assert "cannot connect" in str(e.value)


def test_timeouts_are_retried_and_reported():
    server = Server(*(httpx.ReadTimeout("slow") for _ in range(2)))
    r = retriever(server, retries=1)
    with pytest.raises(RetrieverUnavailableError, match="timed out"):
        r.search(["q"], k=1)
    assert len(server.requests) == 2


def test_persistent_503_is_unavailable_with_status_in_message():
    server = Server(*(httpx.Response(503, json={"detail": "overloaded"}) for _ in range(3)))
    with pytest.raises(RetrieverUnavailableError, match="HTTP 503: overloaded"):
        retriever(server, retries=2).search(["q"], k=1)
    assert len(server.requests) == 3


def test_unavailable_is_a_retriever_error():
    assert issubclass(RetrieverUnavailableError, RetrieverError)
    assert issubclass(RetrieverRequestError, RetrieverError)


@pytest.mark.parametrize("rows", [[[doc(1)]], [[doc(1)], [doc(2)], [doc(3)]]])
def test_wrong_number_of_result_rows(rows):
    server = Server(httpx.Response(200, json={"result": rows}))
    with pytest.raises(RetrieverError, match=f"{len(rows)} result rows for 2 queries"):
        retriever(server).search(["a", "b"], k=1)


def test_missing_result_key():
    server = Server(httpx.Response(200, json={"results": []}))
    with pytest.raises(RetrieverError, match="no 'result' list"):
        retriever(server).search(["a"], k=1)


def test_non_json_answer():
    server = Server(httpx.Response(200, text="<html>proxy error</html>"))
    with pytest.raises(RetrieverError, match="did not answer JSON"):
        retriever(server).search(["a"], k=1)


def test_malformed_hit_is_a_retriever_error():
    server = Server(httpx.Response(200, json={"result": [[{"document": {"id": "1"}, "score": 1}]]}))
    with pytest.raises(RetrieverError, match="malformed result"):
        retriever(server).search(["a"], k=1)


def test_more_queries_than_max_per_request_are_chunked_in_order():
    server = Server()  # echo
    r = retriever(server, max_queries_per_request=3)
    queries = [f"q{i}" for i in range(7)]
    hits = r.search(queries, k=1)
    assert [b["queries"] for b in server.requests] == [queries[0:3], queries[3:6], queries[6:7]]
    # echo numbers hits by position within each request
    assert [h[0].doc_id for h in hits] == ["0", "1", "2", "0", "1", "2", "0"]


def test_empty_query_list_sends_nothing():
    server = Server()
    assert retriever(server).search([], k=3) == []
    assert server.requests == []


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        retriever(Server()).search(["q"], k=0)


def test_health_ok_and_unavailable():
    def handler(request):
        assert request.url.path == "/health"
        return httpx.Response(200, json={"status": "ok"})

    assert retriever(handler).health() == {"status": "ok"}

    def down(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RetrieverUnavailableError, match="http://retr.test:8000/health"):
        retriever(down).health()


# ----------------------------------------------------------------------------- limits, Retry-After, waiting (issue 24)


class LimitedServer(Server):
    """A server with /health limits; rejects, as ours does, a query over `max_query_chars` with 422."""

    def __init__(self, max_query_chars: int = 5, max_queries_per_request: int = 1024, health_status: int = 200):
        super().__init__()
        self.limit, self.max_queries, self.health_status = max_query_chars, max_queries_per_request, health_status
        self.health_calls = 0

    def __call__(self, request):
        if request.url.path == "/health":
            self.health_calls += 1
            return httpx.Response(self.health_status, json={"status": "ok", "limits": {
                "max_query_chars": self.limit, "max_queries_per_request": self.max_queries}})
        body = json.loads(request.content)
        if any(len(q) > self.limit for q in body["queries"]):
            return httpx.Response(422, json={"detail": "query too long"})
        return super().__call__(request)


def test_without_learning_the_limits_an_over_long_query_is_rejected():
    with pytest.raises(RetrieverRequestError, match="422"):
        retriever(LimitedServer()).search(["much too long"], 1)


def test_over_long_queries_are_cut_to_the_servers_limit_and_counted():
    server = LimitedServer(max_query_chars=5)
    r = retriever(server, learn_limits=True)
    assert len(r.search(["short", "much too long", "abc"], 1)) == 3
    assert server.requests[0]["queries"] == ["short", "much ", "abc"]
    assert r.queries_cut == 1
    r.search(["another long one"], 1)
    assert (r.queries_cut, server.health_calls) == (2, 1)  # the limits are learned once


def test_the_servers_request_size_limit_is_learned():
    server = LimitedServer(max_queries_per_request=2)
    r = retriever(server, learn_limits=True)
    r.search(["a", "b", "c"], 1)
    assert [b["queries"] for b in server.requests] == [["a", "b"], ["c"]]


def test_a_server_without_health_has_no_limits_to_learn():
    server = LimitedServer(health_status=404)
    r = retriever(server, learn_limits=True)
    with pytest.raises(RetrieverRequestError):
        r.search(["much too long"], 1)
    r.search(["ok"], 1)
    assert server.health_calls == 1 and r.max_query_chars is None


def test_retry_after_is_honoured(monkeypatch):
    slept = []
    monkeypatch.setattr("searchr1.retrieval.client.time.sleep", slept.append)
    server = Server(httpx.Response(503, headers={"Retry-After": "2"}), "echo")
    retriever(server, retries=1).search(["q"], 1)
    assert slept == [2.0]


def test_the_token_is_sent_as_a_bearer_header():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"result": [[doc(0)]]})

    r = HttpRetriever(URL, token="tok", backoff_s=0)
    r._client = httpx.Client(transport=httpx.MockTransport(handler), headers=r._client.headers)
    r.search(["q"], 1)
    assert seen == ["Bearer tok"]


def test_wait_until_healthy_backs_off_until_the_server_answers():
    answers = iter([False, False, True])

    def handler(request):
        if next(answers):
            return httpx.Response(200, json={"status": "ok"})
        raise httpx.ConnectError("refused", request=request)

    slept = []
    assert retriever(handler).wait_until_healthy(60, first_delay_s=1, sleep=slept.append) >= 0
    assert slept == [1, 2]


def test_wait_until_healthy_gives_up_at_the_deadline():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RetrieverUnavailableError, match="wait_deadline_s"):
        retriever(down).wait_until_healthy(0.05, first_delay_s=0.01)
