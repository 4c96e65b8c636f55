"""`HttpRetriever`: the `Retriever` interface over HTTP, for a `searchr1 serve` or Search-R1 server.

Failures a rollout can survive are retried with exponential backoff and jitter (connection
refused or reset, timeouts, HTTP 5xx, 429, 503). A request the server rejects (other 4xx) is not
retried: the same request would be rejected again. After the last retry the error says what
happened and where, and is raised: a failed search never silently becomes "no passages".
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from searchr1.errors import RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.base import Hit, search_queries
from searchr1.retrieval.corpus import split_contents

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


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

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
                 max_queries_per_request: int = 512, seed: int | None = None):
        import httpx

        self.url = retrieve_url(url)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_queries_per_request = max_queries_per_request
        self._rng = random.Random(seed)
        self._client = httpx.Client(timeout=timeout_s,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.method = "http"
        self.attempts = 0  # total HTTP attempts, for tests and metrics

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

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        queries = search_queries(queries, k)
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
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + self._rng.random()))  # jitter: workers do not retry in lockstep
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


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
    return str(detail)[:300]
