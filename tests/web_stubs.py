"""Stand-ins for the web search APIs on 127.0.0.1, each answering in its provider's documented JSON
shape (written from the providers' public API documentation), so no test needs the internet.

`StubSearchAPI(provider)` serves in a thread. By default it answers every query with `RESULTS`
results whose titles, snippets and URLs name the query; `script` is a list of replies played
first, one per request (status, headers, body: a dict is sent as JSON, a str as is, a float as a
delay in seconds before a normal answer). Every request is recorded (method, path, query string,
headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

RESULTS = 5
KEYS = {"serpapi": "SERPAPI_API_KEY", "serper": "SERPER_API_KEY", "brave": "BRAVE_API_KEY",
        "tavily": "TAVILY_API_KEY"}
PATHS = {"serpapi": "/search.json", "serper": "/search", "brave": "/res/v1/web/search", "tavily": "/search"}


def slug(query: str) -> str:
    return "-".join(query.lower().split())


def documented_reply(provider: str, query: str, n: int = RESULTS) -> dict:
    """A successful reply of `provider` for `query`, in its documented shape."""
    items = [(f"Result {i} for {query}", f"https://example.org/{slug(query)}/{i}", f"Snippet {i} about {query}.")
             for i in range(1, n + 1)]
    if provider == "serpapi":
        return {"search_metadata": {"status": "Success"}, "search_parameters": {"q": query},
                "organic_results": [{"position": i, "title": t, "link": u, "snippet": s}
                                    for i, (t, u, s) in enumerate(items, 1)]}
    if provider == "serper":
        return {"searchParameters": {"q": query, "type": "search"},
                "organic": [{"title": t, "link": u, "snippet": s, "position": i} for i, (t, u, s) in enumerate(items, 1)]}
    if provider == "brave":
        return {"type": "search", "query": {"original": query},
                "web": {"type": "search", "results": [{"title": t, "url": u, "description": s.replace("Snippet", "<strong>Snippet</strong>")}
                                                       for t, u, s in items]}}
    if provider == "tavily":
        return {"query": query, "answer": None, "response_time": 0.5,
                "results": [{"title": t, "url": u, "content": s, "score": round(1 - i / 10, 2)}
                            for i, (t, u, s) in enumerate(items, 1)]}
    raise ValueError(provider)


def query_of(provider: str, request: dict) -> str:
    if provider in ("serpapi", "brave"):
        return request["params"]["q"]
    return request["json"]["q" if provider == "serper" else "query"]


def count_of(provider: str, request: dict) -> int:
    if provider == "serpapi":
        p = request["params"]
        return int(p.get("num", p.get("count", RESULTS)))
    if provider == "brave":
        return int(request["params"]["count"])
    return int(request["json"]["num" if provider == "serper" else "max_results"])


class StubSearchAPI:
    def __init__(self, provider: str, script=(), pages: dict[str, str] | None = None) -> None:
        self.provider = provider
        self.script = list(script)
        self.pages = pages or {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._handle(self, None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                stub._handle(self, json.loads(self.rfile.read(length) or b"null"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return self.base + PATHS[self.provider]

    def _handle(self, h: BaseHTTPRequestHandler, body) -> None:
        parsed = urlparse(h.path)
        request = {"method": h.command, "path": parsed.path,
                   "params": {k: v[0] for k, v in parse_qs(parsed.query).items()},
                   "headers": {k.lower(): v for k, v in h.headers.items()}, "json": body}
        with self._lock:
            self.requests.append(request)
            step = self.script.pop(0) if self.script else None
        if parsed.path in self.pages:
            return self._send(h, 200, {"Content-Type": "text/html"}, self.pages[parsed.path])
        if isinstance(step, float):
            time.sleep(step)
            step = None
        if step is None:
            query = query_of(self.provider, request)
            step = (200, {}, documented_reply(self.provider, query, min(RESULTS, count_of(self.provider, request))))
        self._send(h, *step)

    def _send(self, h, status, headers, body) -> None:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else str(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def start(self) -> "StubSearchAPI":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> "StubSearchAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
