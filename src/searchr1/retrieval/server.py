"""HTTP retrieval server speaking Search-R1's API, so existing clients work unchanged.

  POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    -> {"result": [[{"document": {"id", "contents", "title", "text"}, "score": s}, ...], ...]}
       (with return_scores false, each hit is the bare document, as in Search-R1)
  GET  /health    -> status, index facts, limits, batching statistics

Bad input is answered with a 4xx JSON body {"detail": ...} and never stops the server. Error
replies say what was wrong with the request, never an exception's text or a path (those go to the
server's log). With `server.token`, every request needs `Authorization: Bearer <token>` (else 401).
A full queue answers 503 with Retry-After; /health answers 503 once the batching task has died.
"""

import hmac
import json
import logging
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from starlette.exceptions import HTTPException as _HTTPException

from searchr1 import __version__
from searchr1.retrieval.base import Hit, Retriever
from searchr1.retrieval.batcher import BatcherStopped, MicroBatcher, QueueFull, QueueTimeout
from searchr1.retrieval.settings import ServerConfig, read_token

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # what a client refused by a full queue is told to wait


def _json(payload: Any, status: int = 200, headers: dict | None = None):
    from starlette.responses import Response

    # Bypasses FastAPI's recursive jsonable_encoder: the payload is plain lists and dicts already.
    return Response(json.dumps(payload, ensure_ascii=False).encode("utf-8"), status_code=status,
                    media_type="application/json", headers=headers)


def _document(hit: Hit) -> dict:
    return {"id": hit.doc_id, "contents": hit.contents, "title": hit.title, "text": hit.text}


def _too_large(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes (server.max_body_bytes)"


class _BodyTooLarge(_HTTPException):
    # An HTTPException, so that FastAPI's body parsing re-raises it (it turns any other error
    # raised while reading the body into a 400) and the app answers 413 with its JSON detail.
    def __init__(self, max_bytes: int):
        super().__init__(413, _too_large(max_bytes))


class BodyLimitMiddleware:
    """Reject request bodies over `max_bytes` with 413 before they are buffered whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({"detail": _too_large(self.max_bytes)})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})


class BearerTokenMiddleware:
    """Answer 401 to any request without `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            sent = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):
                body = json.dumps({"detail": "missing or wrong bearer token (server.token)"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def create_app(retriever: Retriever, cfg: ServerConfig, default_topk: int = 3, info: dict | None = None):
    """The FastAPI app around any `Retriever`. A `server.token` variable that is not set is a ConfigError."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    token = read_token(cfg.token, "server.token")
    batcher = MicroBatcher(retriever.search, cfg.max_batch_queries, cfg.max_wait_ms, cfg.max_queue_queries,
                           cfg.queue_timeout_s) if cfg.batching else None
    started_at = time.time()
    counters = {"requests": 0, "errors_4xx": 0, "errors_5xx": 0, "busy_503": 0}

    @asynccontextmanager
    async def lifespan(app):
        if batcher is not None:
            await batcher.start()
        yield
        if batcher is not None:
            await batcher.stop()

    app = FastAPI(title="searchr1 retrieval server", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    if token:
        app.add_middleware(BearerTokenMiddleware, token=token)  # added last: runs first

    class RetrieveRequest(BaseModel):
        queries: list[str]
        topk: int | None = None
        return_scores: bool = False

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        counters["errors_4xx"] += 1
        # Summarise without echoing the input back (it may be a 100 KB query).
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()[:20]]
        return _json({"detail": errors}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        counters["errors_4xx" if exc.status_code < 500 else "errors_5xx"] += 1
        return _json({"detail": exc.detail}, exc.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        counters["errors_5xx"] += 1
        # The reply names no exception text or path; the server's log has them.
        log.error("retrieval failed: %s: %s", type(exc).__name__, exc)
        return _json({"detail": "retrieval failed: internal error (see the server's log)"}, 500)

    def check_limits(req: RetrieveRequest) -> int:
        if not req.queries:
            raise HTTPException(422, "queries must be a non-empty list of strings")
        if len(req.queries) > cfg.max_queries_per_request:
            raise HTTPException(413, f"{len(req.queries)} queries in one request; the limit is "
                                     f"{cfg.max_queries_per_request} (server.max_queries_per_request)")
        k = default_topk if req.topk is None else req.topk
        if not 1 <= k <= cfg.max_topk:
            raise HTTPException(422, f"topk must be between 1 and {cfg.max_topk} (server.max_topk), got {k}")
        if len(req.queries) * k > cfg.max_result_hits:
            raise HTTPException(413, f"{len(req.queries)} queries x topk {k} = {len(req.queries) * k} passages in one "
                                     f"answer; the limit is {cfg.max_result_hits} (server.max_result_hits)")
        for i, q in enumerate(req.queries):
            if len(q) > cfg.max_query_chars:
                raise HTTPException(422, f"queries[{i}] has {len(q)} characters; the limit is "
                                         f"{cfg.max_query_chars} (server.max_query_chars)")
        return k

    @app.post("/retrieve")
    async def retrieve(req: RetrieveRequest):
        counters["requests"] += 1
        k = check_limits(req)
        if batcher is not None:
            try:
                hits = await batcher.search(req.queries, k)
            except (QueueFull, QueueTimeout) as e:
                counters["busy_503"] += 1
                return _json({"detail": f"server busy: {e}"}, 503, {"Retry-After": str(RETRY_AFTER_S)})
            except BatcherStopped:
                counters["errors_5xx"] += 1
                log.error("a request arrived after the batching task stopped")
                return _json({"detail": "the server cannot search (its batching task has stopped); restart it"},
                             503)
        else:
            # Search-R1's behaviour: each request searched on its own, in a thread pool.
            hits = await run_in_threadpool(retriever.search, req.queries, k)
        if req.return_scores:
            result = [[{"document": _document(h), "score": h.score} for h in row] for row in hits]
        else:
            result = [[_document(h) for h in row] for row in hits]
        return _json({"result": result})

    @app.get("/health")
    async def health():
        if batcher is not None and not batcher.alive:
            counters["errors_5xx"] += 1
            return _json({"status": "error", "detail": "the batching task has stopped; restart the server"}, 503)
        body = {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - started_at, 1),
            "default_topk": default_topk,
            "limits": {
                "max_queries_per_request": cfg.max_queries_per_request,
                "max_topk": cfg.max_topk,
                "max_query_chars": cfg.max_query_chars,
                "max_body_bytes": cfg.max_body_bytes,
                "max_result_hits": cfg.max_result_hits,
                "max_queue_queries": cfg.max_queue_queries,
                "queue_timeout_s": cfg.queue_timeout_s,
            },
            "queued_queries": batcher.queued_queries if batcher is not None else 0,
            "http": dict(counters),
            "batching": batcher.stats.as_dict() if batcher is not None else None,
            **(info or {}),
        }
        return _json(body)

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket; port 0 picks a free port. Errors name the address."""
    from searchr1.errors import SearchR1Error

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SearchR1Error(f"cannot listen on {host}:{port}: {e.strerror} "
                            "(is another server running? choose server.port=...)") from None
    # Listen now: connections made as soon as the URL is announced wait in the backlog until
    # uvicorn starts accepting, instead of being refused.
    sock.listen(2048)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_server(app, cfg: ServerConfig):
    import uvicorn

    config = uvicorn.Config(app, log_level=cfg.log_level, access_log=False, timeout_keep_alive=30)
    return uvicorn.Server(config)


def serve(retriever: Retriever, cfg: ServerConfig, default_topk: int = 3, info: dict | None = None) -> None:
    """Run the server in the foreground until interrupted. Port 0 picks a free port."""
    sock = bind_socket(cfg.host, cfg.port)
    server = _uvicorn_server(create_app(retriever, cfg, default_topk, info), cfg)
    # Tests and scripts wait for this exact line to learn the port.
    print(f"searchr1: serving {(info or {}).get('method', '?')} retrieval at {_url(sock)}/retrieve", flush=True)
    sys.stdout.flush()
    server.run(sockets=[sock])


class BackgroundServer:
    """The server on a thread of this process, for the demo and notebooks.

    with BackgroundServer(retriever, ServerConfig(port=0)) as url: HttpRetriever(url).search(...)

    For load tests run `searchr1 serve` as its own process instead: clients in the same process
    share its interpreter lock.
    """

    def __init__(self, retriever: Retriever, cfg: ServerConfig, default_topk: int = 3, info: dict | None = None):
        self.cfg = cfg
        self.app = create_app(retriever, cfg, default_topk, info)
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> str:
        sock = bind_socket(self.cfg.host, self.cfg.port)
        self.url = _url(sock)
        self._server = _uvicorn_server(self.app, self.cfg)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="searchr1-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"retrieval server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
