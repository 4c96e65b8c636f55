"""Web search APIs behind the `Retriever` interface: SerpAPI (Google, Bing), Serper, Brave, Tavily.

Each provider is a small `Provider`: how to ask for the top k results of one query, and how to read
the documented JSON reply into `Hit`s (title, snippet as text, URL as doc_id, a score that falls with
rank unless the provider gives one). `WebSearch` does the rest for all of them:

- the API key is read from the environment variable the settings name, when the first request is
  sent (a replay from the cache needs no key); it never appears in an error message, and httpx's own
  request log lines are redacted (SerpAPI takes the key in the URL);
- requests are spread over a thread pool (`concurrency`) and started at most `requests_per_s`;
- 401/403 is an auth error at once; 429 and 5xx, timeouts and connection errors are retried with
  backoff (a 429's Retry-After is honoured up to `max_retry_after_s`), then fail with one message;
- a reply that is not the provider's documented JSON is a clear error;
- requests, billed requests and the estimated cost (price per 1k from the settings) are counted in
  `metrics()`.
"""

from __future__ import annotations

import email.utils
import html
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx

from searchr1.errors import ConfigError, RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.base import Hit, Retriever, search_queries
from searchr1.retrieval.settings import WebConfig, WebProviderConfig


class WebSearchAuthError(RetrieverRequestError):
    """The provider refused the API key (HTTP 401/403)."""


class WebSearchQuotaError(RetrieverRequestError):
    """The provider kept answering 429 (rate limit or exhausted quota) after the retries (and the
    waits they took): a caller retrying at once will not get through either."""


class WebSearchReplyError(RetrieverError):
    """The provider's reply is not the JSON its documentation describes."""


# ----------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class Request:
    method: str  # GET or POST
    params: dict[str, Any]  # query string
    json: dict[str, Any] | None
    headers: dict[str, str]


class Provider:
    """One web search API: `request` builds the call for one query, `parse` reads its reply."""

    name: str

    def __init__(self, cfg: WebProviderConfig) -> None:
        self.cfg = cfg

    @property
    def namespace(self) -> str:
        """The cache namespace: the provider and every setting that changes its results."""
        return self.name

    def request(self, query: str, k: int, key: str) -> Request:
        raise NotImplementedError

    def parse(self, reply: Any, k: int) -> list[Hit]:
        raise NotImplementedError


def _field(reply: Any, *path: str, default: Any = None) -> Any:
    """reply[path[0]][path[1]]..., `default` where a key is absent; the reply must be an object."""
    node = reply
    for key in path:
        if not isinstance(node, dict):
            raise WebSearchReplyError(f"expected a JSON object holding {key!r}, got {type(node).__name__}")
        if key not in node:
            return default
        node = node[key]
    return node


_TAG = re.compile(r"<[^>]+>")


def _plain(text: Any) -> str:
    """Snippet text without the highlighting markup some providers add (<strong>, &amp;)."""
    return " ".join(html.unescape(_TAG.sub("", str(text or ""))).split())


def hits_from_items(items: Any, k: int, text_key: str, url_key: str, score_key: str | None = None) -> list[Hit]:
    """The top k items of a provider's result list as Hits; items without a URL are skipped (they
    are not documents: answer boxes, ads)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise WebSearchReplyError(f"expected a list of results, got {type(items).__name__}")
    hits: list[Hit] = []
    for item in items:
        if not isinstance(item, dict):
            raise WebSearchReplyError(f"expected each result to be an object, got {type(item).__name__}")
        url = item.get(url_key)
        if not url:
            continue
        rank = len(hits)
        score = item.get(score_key) if score_key else None
        hits.append(Hit(str(url), _plain(item.get("title")), _plain(item.get(text_key)),
                        float(score) if isinstance(score, (int, float)) else 1.0 / (rank + 1)))
        if len(hits) == k:
            break
    return hits


class SerpApi(Provider):
    """GET https://serpapi.com/search.json?engine=google|bing&q=...&api_key=... -> organic_results[]
    {position, title, link, snippet}. The key travels in the query string (SerpAPI's only way)."""

    name = "serpapi"

    @property
    def namespace(self) -> str:
        return ":".join(filter(None, ["serpapi", self.cfg.engine, self.cfg.gl, self.cfg.hl]))

    def request(self, query: str, k: int, key: str) -> Request:
        google = self.cfg.engine == "google"
        params = {"engine": self.cfg.engine, "q": query, "api_key": key, "output": "json",
                  ("num" if google else "count"): k}
        if self.cfg.gl:
            params["gl" if google else "cc"] = self.cfg.gl
        if self.cfg.hl:
            params["hl" if google else "mkt"] = self.cfg.hl
        return Request("GET", params, None, {})

    def parse(self, reply: Any, k: int) -> list[Hit]:
        error = _field(reply, "error")
        if error:
            # SerpAPI answers a search with no results with an error string and HTTP 200
            if "hasn't returned any results" in str(error) or "no results" in str(error).lower():
                return []
            raise RetrieverRequestError(f"serpapi: {error}")
        return hits_from_items(_field(reply, "organic_results"), k, "snippet", "link")


class Serper(Provider):
    """POST https://google.serper.dev/search {q, num, gl, hl} with header X-API-KEY -> organic[]
    {title, link, snippet, position}."""

    name = "serper"

    @property
    def namespace(self) -> str:
        return ":".join(filter(None, ["serper", self.cfg.gl, self.cfg.hl]))

    def request(self, query: str, k: int, key: str) -> Request:
        body: dict[str, Any] = {"q": query, "num": k}
        if self.cfg.gl:
            body["gl"] = self.cfg.gl
        if self.cfg.hl:
            body["hl"] = self.cfg.hl
        return Request("POST", {}, body, {"X-API-KEY": key})

    def parse(self, reply: Any, k: int) -> list[Hit]:
        return hits_from_items(_field(reply, "organic"), k, "snippet", "link")


class Brave(Provider):
    """GET https://api.search.brave.com/res/v1/web/search?q=...&count=... with header
    X-Subscription-Token -> web.results[] {title, url, description} (description may hold <strong>)."""

    name = "brave"

    @property
    def namespace(self) -> str:
        return ":".join(filter(None, ["brave", self.cfg.country]))

    def request(self, query: str, k: int, key: str) -> Request:
        params: dict[str, Any] = {"q": query, "count": min(k, 20)}  # Brave's documented maximum is 20
        if self.cfg.country:
            params["country"] = self.cfg.country
        return Request("GET", params, None, {"X-Subscription-Token": key, "Accept": "application/json"})

    def parse(self, reply: Any, k: int) -> list[Hit]:
        return hits_from_items(_field(reply, "web", "results"), k, "description", "url")


class Tavily(Provider):
    """POST https://api.tavily.com/search {query, max_results, search_depth} with a Bearer key ->
    results[] {title, url, content, score}."""

    name = "tavily"

    @property
    def namespace(self) -> str:
        return f"tavily:{self.cfg.search_depth}"

    def request(self, query: str, k: int, key: str) -> Request:
        body = {"query": query, "max_results": min(k, 20), "search_depth": self.cfg.search_depth}
        return Request("POST", {}, body, {"Authorization": f"Bearer {key}"})

    def parse(self, reply: Any, k: int) -> list[Hit]:
        return hits_from_items(_field(reply, "results"), k, "content", "url", score_key="score")


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (SerpApi, Serper, Brave, Tavily)}


# ----------------------------------------------------------------------------- keeping the key out of logs


class _RedactKeys(logging.Filter):
    """httpx logs every request URL at INFO; SerpAPI's carries the key. Replace key values in them."""

    _KEY = re.compile(r"(api_key=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # httpx passes the URL as a positional argument
            record.args = tuple(self._KEY.sub(r"\1<redacted>", str(a)) if "api_key=" in str(a) else a
                                for a in record.args)
        if isinstance(record.msg, str) and "api_key=" in record.msg:
            record.msg = self._KEY.sub(r"\1<redacted>", record.msg)
        return True


_REDACT = _RedactKeys()
for _name in ("httpx", "httpcore"):
    if _REDACT not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACT)


# ----------------------------------------------------------------------------- page text


class _TextExtractor(HTMLParser):
    _SKIP = {"script", "style", "noscript", "head", "template", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skipping += 1

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def page_text(markup: str, max_chars: int) -> str:
    """The visible text of an HTML page, whitespace squeezed, cut to `max_chars` at a word boundary."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = " ".join(" ".join(parser.parts).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[:cut.rfind(" ")] if " " in cut else cut


# ----------------------------------------------------------------------------- the retriever


class RateLimiter:
    """At most `rate` request starts per second across threads (0: no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, sleep=time.sleep) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebSearch:
    """A `Retriever` over one provider. Thread-safe: the server may call `search` from several threads."""

    def __init__(self, provider: Provider, cfg: WebConfig, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.provider = provider
        self.cfg = cfg
        self.method = provider.name
        self.namespace = provider.namespace + (f":pages{cfg.page_chars}" if cfg.fetch_pages else "")
        self.source = f"{self.namespace} at {provider.cfg.url}"  # what reports name as the searched source
        self.num_docs = None
        self._sleep = sleep
        self._limiter = RateLimiter(provider.cfg.requests_per_s, sleep=sleep)
        self._client = httpx.Client(timeout=cfg.timeout_s, transport=transport, follow_redirects=True,
                                    headers={"User-Agent": "searchr1"})
        self._pool = ThreadPoolExecutor(max_workers=provider.cfg.concurrency, thread_name_prefix=f"web-{provider.name}")
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "billed": 0, "retries": 0, "errors": 0, "page_fetches": 0, "page_errors": 0}

    # -- metrics

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def metrics(self) -> dict[str, float]:
        with self._lock:
            c = dict(self._counts)
        return {**{f"search/{k}": float(v) for k, v in c.items()},
                "search/cost_usd": c["billed"] * self.provider.cfg.price_per_1k / 1000.0}

    # -- searching

    def api_key(self) -> str:
        """The API key, read from the environment when needed (never stored in settings or messages)."""
        env = self.provider.cfg.api_key_env
        key = os.environ.get(env, "").strip()
        if not key:
            raise ConfigError(f"{self.provider.name} needs an API key in the environment variable {env} "
                              f"(export {env}=...; the variable's name is retriever.web.{self.provider.name}.api_key_env)")
        return key

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        queries = search_queries(queries, k)
        if not queries:
            return []
        key = self.api_key()
        return list(self._pool.map(lambda q: self._search_one(q, k, key), queries))

    def _search_one(self, query: str, k: int, key: str) -> list[Hit]:
        reply = self._call(self.provider.request(query, k, key), key)
        try:
            hits = self.provider.parse(reply, k)
        except WebSearchReplyError as e:
            self._count("errors")
            raise WebSearchReplyError(f"{self.provider.name} sent a reply that is not its documented JSON: {e}") from None
        if self.cfg.fetch_pages:
            hits = [self._with_page(h) for h in hits]
        return hits

    def _call(self, req: Request, key: str) -> Any:
        name, cfg = self.provider.name, self.cfg
        delay = cfg.backoff_s
        failure = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                self._count("retries")
            self._limiter.wait()
            self._count("requests")
            try:
                response = self._client.request(req.method, self.provider.cfg.url, params=req.params or None,
                                                json=req.json, headers=req.headers)
            except httpx.TimeoutException:
                failure = f"no reply within {cfg.timeout_s:g} s"
            except httpx.TransportError as e:
                failure = f"cannot reach {_host(self.provider.cfg.url)} ({type(e).__name__})"
            else:
                status = response.status_code
                if status in (401, 403):
                    self._count("errors")
                    raise WebSearchAuthError(
                        f"{name} refused the API key in ${self.provider.cfg.api_key_env} (HTTP {status}): "
                        f"{_redact(_reply_detail(response), key)}; check the key and that its plan covers this API")
                if status == 429:
                    wait = retry_after_s(response.headers.get("Retry-After"))
                    failure = f"rate limited or out of quota (HTTP 429: {_redact(_reply_detail(response), key)})"
                    if wait is not None and wait > cfg.max_retry_after_s:
                        self._count("errors")
                        raise WebSearchQuotaError(f"{name}: {failure}; it asks to wait {wait:.0f} s, more than "
                                                  f"retriever.web.max_retry_after_s={cfg.max_retry_after_s:g}")
                    if attempt < cfg.retries:
                        self._sleep(wait if wait is not None else delay)
                        delay *= 2
                        continue
                    self._count("errors")
                    raise WebSearchQuotaError(f"{name}: {failure}, still after {cfg.retries} retries; wait, "
                                              f"lower retriever.web.{name}.requests_per_s, or raise the plan's quota")
                if status >= 500:
                    failure = f"server error HTTP {status}"
                elif status >= 400:
                    self._count("errors")
                    raise RetrieverRequestError(f"{name} rejected the request (HTTP {status}): "
                                                f"{_redact(_reply_detail(response), key)}")
                else:
                    self._count("billed")
                    try:
                        return response.json()
                    except ValueError:
                        self._count("errors")
                        raise WebSearchReplyError(
                            f"{name} sent a reply that is not JSON (HTTP {status}, "
                            f"{response.headers.get('content-type', 'no content type')}): "
                            f"{_redact(response.text[:200], key)!r}") from None
            if attempt < cfg.retries:
                self._sleep(delay)
                delay *= 2
        self._count("errors")
        raise RetrieverUnavailableError(f"{name}: {failure}, after {cfg.retries} retries")

    def _with_page(self, hit: Hit) -> Hit:
        self._count("page_fetches")
        try:
            response = self._client.get(hit.doc_id, timeout=self.cfg.page_timeout_s)
            response.raise_for_status()
            kind = response.headers.get("content-type", "text/html")
            # a PDF or an image has no text we can read here: the snippet stays
            text = page_text(response.text, self.cfg.page_chars) if kind.startswith(("text/", "application/xhtml")) else ""
        except (httpx.HTTPError, ValueError):
            text = ""
        if not text:
            self._count("page_errors")
            return hit
        return Hit(hit.doc_id, hit.title, text, hit.score)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def _host(url: str) -> str:
    return httpx.URL(url).host or url


def _reply_detail(response: httpx.Response) -> str:
    """The provider's own error text when its reply carries one, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or "no body"
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if body.get(key):
                value = body[key]
                if isinstance(value, dict):  # Tavily: {"detail": {"error": "..."}}
                    value = value.get("error") or value.get("message") or value
                return str(value)
    return str(body)[:200]


def _redact(text: str, key: str) -> str:
    return text.replace(key, "<redacted>") if key else text


def open_web_search(provider: str, cfg: WebConfig, cache=None, transport: httpx.BaseTransport | None = None) -> Retriever:
    """`retriever.method=<provider>`: the provider's `WebSearch`, behind the query cache when one is given."""
    search = WebSearch(PROVIDERS[provider](getattr(cfg, provider)), cfg, transport=transport)
    if cache is None or not cache.replay:
        search.api_key()  # a missing key is a config error now, not at the first search (a replay needs none)
    if cache is None:
        return search
    from searchr1.retrieval.cache import CachedRetriever

    return CachedRetriever(search, cache, search.namespace)
