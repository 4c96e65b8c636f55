"""searchr1.retrieval.web: each provider's request and documented reply -> Hits, and the retry,
error, rate-limit and cost logic, driven through httpx's MockTransport (no sockets; the same code
against real HTTP stubs on 127.0.0.1 is in tests/integration/test_web_stub.py)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from searchr1.errors import ConfigError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.settings import WebConfig
from searchr1.retrieval.web import (
    PROVIDERS,
    RateLimiter,
    WebSearch,
    WebSearchAuthError,
    WebSearchQuotaError,
    WebSearchReplyError,
    hits_from_items,
    open_web_search,
    page_text,
    retry_after_s,
)
from web_stubs import KEYS, documented_reply

KEY = "sk-test-secret-123"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for env in KEYS.values():
        monkeypatch.setenv(env, KEY)


def make(provider: str, handler, sleeps: list | None = None, **web) -> WebSearch:
    cfg = WebConfig(**{"retries": 2, "backoff_s": 0.5, **web})
    getattr(cfg, provider).requests_per_s = 0
    return WebSearch(PROVIDERS[provider](getattr(cfg, provider)), cfg, transport=httpx.MockTransport(handler),
                     sleep=(sleeps.append if sleeps is not None else lambda s: None))


def ok(provider):
    def handler(request: httpx.Request) -> httpx.Response:
        if provider in ("serpapi", "brave"):
            q = request.url.params["q"]
        else:
            q = json.loads(request.content)["q" if provider == "serper" else "query"]
        return httpx.Response(200, json=documented_reply(provider, q, 5))
    return handler


@pytest.mark.parametrize("provider", ["serpapi", "serper", "brave", "tavily"])
def test_each_provider_maps_its_documented_reply_to_hits(provider):
    seen = []

    def handler(request):
        seen.append(request)
        return ok(provider)(request)

    ws = make(provider, handler)
    [hits] = ws.search(["who wrote hamlet"], 3)
    assert [h.doc_id for h in hits] == [f"https://example.org/who-wrote-hamlet/{i}" for i in (1, 2, 3)]
    assert [h.title for h in hits] == [f"Result {i} for who wrote hamlet" for i in (1, 2, 3)]
    assert hits[0].text == "Snippet 1 about who wrote hamlet."  # Brave's <strong> markup removed
    scores = [h.score for h in hits]
    assert scores == ([0.9, 0.8, 0.7] if provider == "tavily" else [1.0, 0.5, 1 / 3])
    req = seen[0]
    # how each API is asked (its documented request) and where the key goes
    if provider == "serpapi":
        assert req.method == "GET" and dict(req.url.params) == {"engine": "google", "q": "who wrote hamlet",
                                                                "api_key": KEY, "output": "json", "num": "3"}
    elif provider == "serper":
        assert req.method == "POST" and json.loads(req.content) == {"q": "who wrote hamlet", "num": 3}
        assert req.headers["X-API-KEY"] == KEY
    elif provider == "brave":
        assert req.method == "GET" and dict(req.url.params) == {"q": "who wrote hamlet", "count": "3"}
        assert req.headers["X-Subscription-Token"] == KEY
    else:
        assert json.loads(req.content) == {"query": "who wrote hamlet", "max_results": 3, "search_depth": "basic"}
        assert req.headers["Authorization"] == f"Bearer {KEY}"
    m = ws.metrics()
    assert m["search/requests"] == 1 and m["search/billed"] == 1
    price = {"serpapi": 15.0, "serper": 1.0, "brave": 5.0, "tavily": 8.0}[provider]
    assert m["search/cost_usd"] == pytest.approx(price / 1000)


def test_serpapi_bing_uses_bing_parameters_and_its_own_cache_namespace():
    seen = []
    cfg = WebConfig()
    cfg.serpapi.engine, cfg.serpapi.gl, cfg.serpapi.hl = "bing", "us", "en-US"

    def handler(request):
        seen.append(dict(request.url.params))
        return httpx.Response(200, json=documented_reply("serpapi", request.url.params["q"], 2))

    ws = WebSearch(PROVIDERS["serpapi"](cfg.serpapi), cfg, transport=httpx.MockTransport(handler))
    assert len(ws.search(["q"], 2)[0]) == 2
    assert seen[0] == {"engine": "bing", "q": "q", "api_key": KEY, "output": "json", "count": "2", "cc": "us",
                       "mkt": "en-US"}
    assert ws.namespace == "serpapi:bing:us:en-US"


def test_serpapi_no_results_is_an_empty_list_and_its_other_errors_are_raised():
    ws = make("serpapi", lambda r: httpx.Response(200, json={"error": "Google hasn't returned any results for this query."}))
    assert ws.search(["zzqx"], 3) == [[]]
    ws = make("serpapi", lambda r: httpx.Response(200, json={"error": "Unsupported `xx` location"}))
    with pytest.raises(RetrieverRequestError, match="serpapi: Unsupported"):
        ws.search(["q"], 3)


def test_429_honours_retry_after_then_succeeds():
    replies = [httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
               httpx.Response(429, json={"error": "slow down"})]

    def handler(request):
        return replies.pop(0) if replies else ok("serper")(request)

    sleeps = []
    ws = make("serper", handler, sleeps)
    assert len(ws.search(["q"], 2)[0]) == 2
    assert sleeps == [7.0, 1.0]  # Retry-After, then the doubled backoff (0.5 -> 1.0) when none is given
    m = ws.metrics()
    assert (m["search/requests"], m["search/retries"], m["search/billed"]) == (3, 2, 1)


def test_429_after_the_retries_is_a_quota_error():
    sleeps = []
    ws = make("tavily", lambda r: httpx.Response(429, json={"detail": {"error": "usage limit"}}), sleeps)
    with pytest.raises(WebSearchQuotaError, match=r"tavily: rate limited or out of quota \(HTTP 429: usage limit\), "
                                                  r"still after 2 retries"):
        ws.search(["q"], 2)
    assert sleeps == [0.5, 1.0] and ws.metrics()["search/cost_usd"] == 0.0


def test_a_retry_after_longer_than_allowed_fails_at_once():
    sleeps = []
    ws = make("brave", lambda r: httpx.Response(429, headers={"Retry-After": "3600"}), sleeps, max_retry_after_s=60)
    with pytest.raises(WebSearchQuotaError, match="asks to wait 3600 s"):
        ws.search(["q"], 2)
    assert sleeps == []


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried_and_never_shows_the_key(status):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json={"error": f"Invalid API key {KEY}"})

    ws = make("serpapi", handler)
    with pytest.raises(WebSearchAuthError) as e:
        ws.search(["q"], 2)
    assert len(calls) == 1
    assert f"HTTP {status}" in str(e.value) and "$SERPAPI_API_KEY" in str(e.value)
    assert KEY not in str(e.value) and "<redacted>" in str(e.value)


def test_timeouts_and_5xx_are_retried_then_reported():
    def timeout(request):
        raise httpx.ReadTimeout("read timed out", request=request)

    sleeps = []
    ws = make("serper", timeout, sleeps, timeout_s=3)
    with pytest.raises(RetrieverUnavailableError, match=r"serper: no reply within 3 s, after 2 retries"):
        ws.search(["q"], 2)
    assert sleeps == [0.5, 1.0]
    replies = [httpx.Response(503), httpx.Response(502)]
    ws = make("serper", lambda r: replies.pop(0) if replies else ok("serper")(r))
    assert len(ws.search(["q"], 1)[0]) == 1


@pytest.mark.parametrize("body,match", [
    ("<html>not json</html>", "not JSON"),
    ({"organic": {"title": "x"}}, "not its documented JSON: expected a list of results"),
    ({"organic": ["x"]}, "expected each result to be an object"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_replies_are_clear_errors(body, match):
    reply = (httpx.Response(200, text=body, headers={"content-type": "text/html"}) if isinstance(body, str)
             else httpx.Response(200, json=body))
    ws = make("serper", lambda r: reply)
    with pytest.raises(WebSearchReplyError, match=match):
        ws.search(["q"], 2)


def test_missing_key_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY")
    ws = make("serper", ok("serper"))
    with pytest.raises(ConfigError, match="SERPER_API_KEY"):
        ws.search(["q"], 2)


def test_httpx_request_log_lines_do_not_carry_the_serpapi_key(caplog):
    ws = make("serpapi", ok("serpapi"))
    with caplog.at_level(logging.INFO, logger="httpx"):
        ws.search(["q"], 1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "api_key=<redacted>" in text and KEY not in text


def test_items_without_a_url_are_skipped_and_k_is_respected():
    items = [{"title": "answer box"}, {"title": "a", "link": "u1", "snippet": "s &amp; <b>t</b>"},
             {"title": "b", "link": "u2"}, {"title": "c", "link": "u3"}]
    hits = hits_from_items(items, 2, "snippet", "link")
    assert [(h.doc_id, h.title, h.text, h.score) for h in hits] == [("u1", "a", "s & t", 1.0), ("u2", "b", "", 0.5)]
    assert hits_from_items(None, 3, "snippet", "link") == []


def test_fetched_pages_replace_snippets_and_an_unreadable_page_keeps_the_snippet():
    page = "<html><head><title>T</title><script>var x=1;</script></head><body><p>Hamlet was written</p>" \
           "<p>by William Shakespeare around 1600.</p></body></html>"

    def handler(request):
        if request.url.host == "example.org":
            if request.url.path.endswith("/2"):
                return httpx.Response(404)
            if request.url.path.endswith("/3"):
                return httpx.Response(200, content=b"%PDF-1.7", headers={"content-type": "application/pdf"})
            return httpx.Response(200, text=page, headers={"content-type": "text/html"})
        return ok("serper")(request)

    ws = make("serper", handler, fetch_pages=True, page_chars=40)
    hits = ws.search(["hamlet"], 3)[0]
    assert hits[0].text == "Hamlet was written by William"  # cut at a word boundary within 40 characters
    assert [h.text for h in hits[1:]] == ["Snippet 2 about hamlet.", "Snippet 3 about hamlet."]  # 404, a PDF
    m = ws.metrics()
    assert (m["search/page_fetches"], m["search/page_errors"]) == (3, 2)
    assert ws.namespace == "serper:pages40"


def test_page_text_skips_scripts_and_styles():
    assert page_text("<style>p{}</style><p>a&amp;b</p>\n<div> c </div>", 100) == "a&b c"


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("12") == 12.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_rate_limiter_spaces_request_starts():
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert sleeps == [0.25, 0.25]
    RateLimiter(0, clock=lambda: now[0], sleep=sleep).wait()
    assert len(sleeps) == 2


def test_queries_run_concurrently_up_to_the_providers_limit():
    import threading
    import time

    active, peak, lock = [0], [0], threading.Lock()

    def handler(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return ok("serper")(request)

    cfg = WebConfig()
    cfg.serper.concurrency, cfg.serper.requests_per_s = 3, 0
    ws = WebSearch(PROVIDERS["serper"](cfg.serper), cfg, transport=httpx.MockTransport(handler))
    out = ws.search([f"q{i}" for i in range(9)], 1)
    assert [h[0].title for h in out] == [f"Result 1 for q{i}" for i in range(9)]  # order kept
    assert peak[0] == 3


def test_open_web_search_puts_the_cache_in_front(tmp_path):
    from searchr1.retrieval.cache import CachedRetriever, QueryCache

    r = open_web_search("serper", WebConfig(), QueryCache(tmp_path / "c.sqlite"))
    assert isinstance(r, CachedRetriever) and r.namespace == "serper" and r.method == "serper"
    r.close()


def test_open_web_search_checks_the_key_unless_replaying(tmp_path, monkeypatch):
    from searchr1.retrieval.cache import QueryCache

    monkeypatch.delenv("TAVILY_API_KEY")
    with pytest.raises(ConfigError, match=r"tavily needs an API key in the environment variable TAVILY_API_KEY"):
        open_web_search("tavily", WebConfig())
    QueryCache(tmp_path / "c.sqlite").put_many("tavily:basic", ["q"], 1, [[]])
    replay = open_web_search("tavily", WebConfig(), QueryCache(tmp_path / "c.sqlite", replay=True))
    assert replay.search(["q"], 1) == [[]]
