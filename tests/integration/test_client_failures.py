"""The HTTP client when the server is absent, dies, or rejects a request: a clear error, never []."""

from __future__ import annotations

import time

import pytest

from itest_helpers import free_port

from searchr1.errors import RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval import HttpRetriever
from searchr1.retrieval.process import ServerProcess


def test_nothing_listening_fails_fast_with_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    client = HttpRetriever(url, retries=1, backoff_s=0.01, timeout_s=5)
    start = time.monotonic()
    with pytest.raises(RetrieverUnavailableError) as err:
        client.search(["who wrote hamlet"], 3)
    assert time.monotonic() - start < 5
    assert url + "/retrieve" in str(err.value)
    assert "2 attempts" in str(err.value) and client.attempts == 2
    with pytest.raises(RetrieverUnavailableError, match=url):
        client.health()
    client.close()


def test_server_killed_mid_session_raises_instead_of_returning_nothing(wiki_index):
    server = ServerProcess([f"retriever.index={wiki_index}", "retriever.method=bm25", "server.port=0"])
    url = server.start()
    try:
        client = HttpRetriever(url, retries=1, backoff_s=0.01, timeout_s=10)
        first = client.search(["who wrote hamlet", "capital of france"], 3)
        assert [len(row) for row in first] == [3, 3]
        assert client.health()["status"] == "ok"

        server.proc.kill()  # no graceful shutdown: the keep-alive connection just dies
        server.proc.wait(timeout=30)

        start = time.monotonic()
        with pytest.raises(RetrieverUnavailableError) as err:
            client.search(["who wrote hamlet"], 3)
        assert time.monotonic() - start < 10
        assert url in str(err.value)
        # ... and every later search keeps failing loudly.
        with pytest.raises(RetrieverUnavailableError):
            client.search(["capital of france"], 3)
        client.close()
    finally:
        server.stop()


def test_rejected_request_is_not_retried(server_url):
    """A 4xx means the request itself is wrong: one attempt, RetrieverRequestError with the reason."""
    client = HttpRetriever(server_url, retries=3, backoff_s=0.01)
    with pytest.raises(RetrieverRequestError) as err:
        client.search(["x" * 5000], 3)
    assert client.attempts == 1
    assert "422" in str(err.value) and "server.max_query_chars" in str(err.value)
    with pytest.raises(RetrieverRequestError, match="server.max_topk"):
        client.search(["who wrote hamlet"], 1000)
    # The same client still works for good requests.
    assert len(client.search(["who wrote hamlet"], 2)[0]) == 2
    client.close()


def test_server_that_cannot_start_reports_why(tmp_path):
    """ServerProcess on a directory that is no index: the child's own error, not a hang."""
    server = ServerProcess([f"retriever.index={tmp_path / 'missing'}", "server.port=0"], startup_timeout_s=120)
    with pytest.raises(RetrieverUnavailableError) as err:
        server.start()
    assert "is not a searchr1 index" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_port_already_in_use_is_a_clear_error(wiki_index, server_url):
    port = int(server_url.rsplit(":", 1)[1])
    server = ServerProcess([f"retriever.index={wiki_index}", "retriever.method=bm25", f"server.port={port}"])
    with pytest.raises(RetrieverUnavailableError) as err:
        server.start()
    assert f"cannot listen on 127.0.0.1:{port}" in str(err.value)
