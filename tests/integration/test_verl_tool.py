"""searchr1.export.verl_tool.SearchTool without veRL: the two veRL classes it builds on are replaced
by minimal stand-ins, and it searches a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
import types
from dataclasses import dataclass

import pytest

from searchr1.errors import RetrieverUnavailableError
from searchr1.retrieval.base import Hit
from searchr1.retrieval.server import BackgroundServer
from searchr1.retrieval.settings import ServerConfig


@dataclass
class ToolResponse:
    text: str


class BaseTool:
    def __init__(self, config, tool_schema):
        self.config, self.tool_schema = config, tool_schema


class Schema:
    @staticmethod
    def model_validate(data):
        return data


@pytest.fixture
def SearchTool(monkeypatch):
    verl = types.ModuleType("verl")
    tools = types.ModuleType("verl.tools")
    base = types.ModuleType("verl.tools.base_tool")
    schemas = types.ModuleType("verl.tools.schemas")
    base.BaseTool = BaseTool
    schemas.OpenAIFunctionToolSchema, schemas.ToolResponse = Schema, ToolResponse
    for name, module in {"verl": verl, "verl.tools": tools, "verl.tools.base_tool": base,
                         "verl.tools.schemas": schemas}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "searchr1.export.verl_tool", raising=False)
    from searchr1.export.verl_tool import SearchTool

    yield SearchTool
    sys.modules.pop("searchr1.export.verl_tool", None)


class Backend:
    def __init__(self, broken: bool = False):
        self.calls, self.broken = 0, broken

    def search(self, queries, k):
        self.calls += 1
        if self.broken:
            raise RuntimeError("index gone")
        return [[Hit("1", "Cats", f"about {q}", 1.0)] for q in queries]


def execute(tool, parameters):
    return asyncio.run(tool.execute("id", parameters))


def test_results_are_formatted(SearchTool):
    with BackgroundServer(Backend(), ServerConfig(port=0)) as url:
        tool = SearchTool({"retrieval_service_url": url, "topk": 1, "backoff": 0})
        response, _, info = execute(tool, {"query_list": ["cats", "dogs"]})
    assert response.text == "Doc 1(Title: \"Cats\") about cats\n---\nDoc 1(Title: \"Cats\") about dogs"
    assert info["status"] == "success"


def test_a_failing_retriever_fails_the_call_after_the_retries_instead_of_answering_error_text(SearchTool):
    backend = Backend(broken=True)
    with BackgroundServer(backend, ServerConfig(port=0)) as url:
        tool = SearchTool({"retrieval_service_url": url, "retries": 2, "backoff": 0})
        with pytest.raises(RetrieverUnavailableError, match="after 3 attempts"):
            execute(tool, {"query_list": ["cats"]})
    assert tool.retriever.attempts == 3 and backend.calls >= 1  # 3 consecutive failures, then the error


def test_a_malformed_call_is_still_answered(SearchTool):
    with BackgroundServer(Backend(), ServerConfig(port=0)) as url:
        tool = SearchTool({"retrieval_service_url": url})
        response, _, info = execute(tool, {"query_list": []})
    assert info["status"] == "invalid" and response.text.startswith("Error:")


def test_the_token_is_sent_from_the_environment(SearchTool, monkeypatch):
    monkeypatch.setenv("SEARCH_TOKEN", "s3cret")
    with BackgroundServer(Backend(), ServerConfig(port=0, token="SEARCH_TOKEN")) as url:
        with_token = SearchTool({"retrieval_service_url": url, "token_env": "SEARCH_TOKEN", "backoff": 0})
        assert execute(with_token, {"query": "cats"})[2]["status"] == "success"
        without = SearchTool({"retrieval_service_url": url, "retries": 0})
        with pytest.raises(Exception, match="401"):
            execute(without, {"query": "cats"})
