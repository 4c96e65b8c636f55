"""`HttpRetriever`: the `Retriever` interface over HTTP, for a `searchr1 serve` or Search-R1 server.

Failures a rollout can survive are retried with exponential backoff and jitter (connection
refused or reset, timeouts, HTTP 5xx, 429, 503; a Retry-After the server sends is honoured). This
is the one retry loop of an HTTP search: the agent does not retry it again. A request the server
rejects (other 4xx) is not retried: the same request would be rejected again. After the last retry
the error says what happened and where, and is raised: a failed search never silently becomes "no
passages". A training run then checkpoints and waits for the server (`wait_until_healthy`).

Queries are model output: with `learn_limits`, the client reads the server's limits from /health
once and cuts a query longer than `max_query_chars` to that length (counted in `queries_cut`)
instead of having the whole batch rejected.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from searchr1.errors import RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.base import Hit, search_queries
from searchr1.retrieval.corpus import split_contents

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0  # a server's Retry-After is honoured up to this


def retrieve_url(url: str) -> str:
    """Accept `http://host:port`, `.../` or `.../retrieve`; return the `/retrieve` endpoint."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/retrieve") else url + "/retrieve"


def parse_hit(item: dict) -> Hit:
    """One element of a Search-R1 result row -> Hit.

    With scores the element is `{"document": {...}, "score": s}`, without it is the document.
    Documents carry `contents` (`"Title"\\ntext`), and from our server also `title` and `text`.
    """
    if not isinstance(item, dict):
        raise ValueError(f"expected an object, got {type(item).__name__}")
    doc = item.get("document", item)
    score = float(item.get("score", float("nan"))) if "document" in item else float("nan")
    if not isinstance(doc, dict):
        raise ValueError("'document' is not an object")
    contents = doc.get("contents")
    if isinstance(doc.get("text"), str):
        title, text = doc.get("title") or "", doc["text"]
    elif isinstance(contents, str):
        title, text = split_contents(contents)
    else:
        raise ValueError("document has neither 'contents' nor 'text'")
    raw = contents if isinstance(contents, str) and contents != f'"{title}"\n{text}' else None
    return Hit(str(doc.get("id", "")), title, text, score, raw)


class HttpRetriever:
    """Search through a remote retrieval server; interchangeable with an in-process retriever."""

    retries_itself = True  # backoff and Retry-After here: the agent must not retry around it

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
                 max_queries_per_request: int = 512, seed: int | None = None, token: str = "",
                 learn_limits: bool = False):
        import httpx

        self.url = retrieve_url(url)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_queries_per_request = max_queries_per_request
        self._rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.method = "http"
        self.attempts = 0  # total HTTP attempts, for tests and metrics
        self.max_query_chars: int | None = None  # the server's, once learned
        self._limits_known = not learn_limits
        self.queries_cut = 0  # queries cut to max_query_chars, for metrics

    @classmethod
    def from_config(cls, cfg) -> HttpRetriever:
        """From `RetrieverConfig`: its url, timeout, retries, backoff and token (read from the environment)."""
        from searchr1.retrieval.settings import read_token

        return cls(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries, backoff_s=cfg.backoff_s,
                   token=read_token(cfg.token, "retriever.token"), learn_limits=True)

    def health(self) -> dict:
        """GET /health of the server (raises RetrieverUnavailableError when it does not answer)."""
        import httpx

        url = self.url.removesuffix("/retrieve") + "/health"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise RetrieverUnavailableError(f"retrieval server at {url} is not healthy: {e}") from None

    def wait_until_healthy(self, deadline_s: float, first_delay_s: float = 1.0, max_delay_s: float = 30.0,
                           sleep: Callable[[float], None] = time.sleep) -> float:
        """Poll /health with doubling delays until it answers, for at most `deadline_s`; seconds waited.

        Raises RetrieverUnavailableError when the deadline passes first."""
        start = time.monotonic()
        delay = first_delay_s
        while True:
            try:
                self.health()
                return time.monotonic() - start
            except RetrieverUnavailableError as e:
                left = deadline_s - (time.monotonic() - start)
                if left <= 0:
                    raise RetrieverUnavailableError(
                        f"{e}; gave up after waiting {deadline_s:g} s (retriever.wait_deadline_s)") from None
                sleep(min(delay, left))
                delay = min(delay * 2, max_delay_s)

    def _learn_limits(self) -> None:
        """Read the server's query limits from /health, once. A server without /health (Search-R1's
        own) has no limits to learn; one that does not answer is asked again at the next search."""
        import httpx

        try:
            response = self._client.get(self.url.removesuffix("/retrieve") + "/health")
        except httpx.HTTPError:
            return
        if response.status_code >= 500:
            return
        self._limits_known = True
        try:
            limits = response.json().get("limits", {}) if response.status_code == 200 else {}
        except (ValueError, AttributeError):
            return
        if isinstance(limits.get("max_query_chars"), int):
            self.max_query_chars = limits["max_query_chars"]
        if isinstance(limits.get("max_queries_per_request"), int):
            self.max_queries_per_request = min(self.max_queries_per_request, limits["max_queries_per_request"])

    def _cut(self, queries: list[str]) -> list[str]:
        limit = self.max_query_chars
        if limit is None:
            return queries
        cut = [q[:limit] for q in queries]
        self.queries_cut += sum(len(q) > limit for q in queries)
        return cut

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        queries = search_queries(queries, k)
        if not queries:
            return []
        if not self._limits_known:
            self._learn_limits()
        queries = self._cut(queries)
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.max_queries_per_request):
            chunk = queries[start : start + self.max_queries_per_request]
            out.extend(self._search_chunk(chunk, k))
        return out

    def _search_chunk(self, queries: list[str], k: int) -> list[list[Hit]]:
        payload = self._post({"queries": queries, "topk": k, "return_scores": True})
        rows = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or len(rows) != len(queries):
            got = f"{len(rows)} result rows" if isinstance(rows, list) else "no 'result' list"
            raise RetrieverError(f"{self.url} answered {got} for {len(queries)} queries")
        try:
            return [[parse_hit(item) for item in row] for row in rows]
        except (ValueError, TypeError, AttributeError) as e:
            raise RetrieverError(f"{self.url} returned a malformed result: {e}") from None

    def _post(self, body: dict) -> dict:
        import httpx

        last = ""
        retry_after = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                # jitter: workers do not retry in lockstep; a full server says when to come back
                time.sleep(max(delay * (0.5 + self._rng.random()), retry_after))
            retry_after = 0.0
            self.attempts += 1
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__})"
                continue
            except httpx.TransportError as e:
                last = f"cannot connect ({type(e).__name__}: {e})"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last = f"HTTP {response.status_code}: {_detail(response)}"
                retry_after = _retry_after(response)
                continue
            if response.status_code >= 400:
                raise RetrieverRequestError(
                    f"retrieval server {self.url} rejected the request: HTTP {response.status_code}: "
                    f"{_detail(response)}"
                )
            try:
                return response.json()
            except ValueError:
                raise RetrieverError(f"{self.url} did not answer JSON: {response.text[:200]!r}") from None
        raise RetrieverUnavailableError(
            f"retrieval server {self.url} failed after {self.retries + 1} attempts: {last}. "
            "Is `searchr1 serve` running there (check GET /health)?"
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpRetriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _retry_after(response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", 0)), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: not sent by our server
        return 0.0


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
    return str(detail)[:300]
