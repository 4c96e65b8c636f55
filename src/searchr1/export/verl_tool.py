"""A veRL tool that searches through our retrieval server (for veRL's tool-calling agent loop).

veRL <= 0.8 shipped `verl.tools.search_tool.SearchTool` (a client of Search-R1's /retrieve API);
veRL 0.9 removed it. This class takes its place with the same config keys, so the tool config that
`searchr1 export verl` writes works with any veRL that has `verl.tools.base_tool.BaseTool`:

    tools:
      - class_name: searchr1.export.verl_tool.SearchTool
        config: {type: native, retrieval_service_url: http://HOST:8000/retrieve, topk: 3, timeout: 30}
        tool_schema: {type: function, function: {name: search, parameters: {... query_list ...}}}

The model calls it as `{"name": "search", "arguments": {"query_list": ["..."]}}` (veRL's
search_r1_like schema; a single `"query": "..."` is accepted too). The response is the passages
as Search-R1 shows them inside <information> (`Doc 1(Title: ...) text` lines), one block per
query, blocks separated by a line `---`. A retrieval that fails `retries + 1` consecutive times
(the client retries with backoff) raises `RetrieverError`, as our own agent does: veRL's tool
answered an error text instead, which the policy then learned from as if it were a search result.
A malformed call (the policy's fault) is still answered with an error text.

This is the tool-calling path (JSON `<tool_call>`s, an instruct model's chat template). The
paper's own text protocol (`<search>` / `<information>`) is `searchr1.export.verl_agent`.

Config keys: retrieval_service_url (required; `http://host:port` or `.../retrieve`), topk (3),
timeout (30 s per request), retries (3), backoff (0.5 s, doubled per retry), token_env (the name
of the environment variable holding the server's bearer token; '' sends none), rate_limit
(concurrent requests per rollout worker process, 120). veRL's num_workers and
enable_global_rate_limit are accepted and ignored: the server batches concurrent requests itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from searchr1.export.verl import TOOL_SCHEMA
from searchr1.protocol import format_documents
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.settings import read_token


class SearchTool(BaseTool):
    """Search-R1's retrieval as a veRL `BaseTool`, backed by `searchr1.retrieval.HttpRetriever`."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(TOOL_SCHEMA)
        super().__init__(config, tool_schema)
        url = config.get("retrieval_service_url")
        if not url:
            raise ValueError("the search tool's config needs retrieval_service_url (e.g. http://127.0.0.1:8000/retrieve)")
        self.topk = int(config.get("topk", 3))
        self.timeout = float(config.get("timeout", 30))
        self.rate_limit = int(config.get("rate_limit", 120))
        if self.topk < 1 or self.timeout <= 0 or self.rate_limit < 1:
            raise ValueError("search tool: topk and rate_limit must be >= 1 and timeout > 0")
        self.retriever = HttpRetriever(url, timeout_s=self.timeout, retries=int(config.get("retries", 3)),
                                       backoff_s=float(config.get("backoff", 0.5)), learn_limits=True,
                                       token=read_token(str(config.get("token_env", "")), "token_env"))
        self.retrieval_service_url = self.retriever.url
        self._semaphores: dict[int, asyncio.Semaphore] = {}

    def _semaphore(self) -> asyncio.Semaphore:
        # one per event loop: a semaphore is bound to the loop it is first used on
        loop = asyncio.get_running_loop()
        return self._semaphores.setdefault(id(loop), asyncio.Semaphore(self.rate_limit))

    @staticmethod
    def queries_of(parameters: Any) -> list[str] | str:
        """The stripped queries of a call, or an error message (str) for a malformed call."""
        if not isinstance(parameters, dict):
            return "Error: the search tool takes a JSON object with 'query_list', a list of strings."
        queries = parameters.get("query_list")
        if queries is None and isinstance(parameters.get("query"), str):
            queries = [parameters["query"]]
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries:
            return "Error: 'query_list' is missing, empty, or not a list of strings."
        cleaned = [q.strip() for q in queries if isinstance(q, str) and q.strip()]
        if len(cleaned) != len(queries):
            return "Error: every entry of 'query_list' must be a non-empty string."
        return cleaned

    @staticmethod
    def format_results(results: list[list[Any]]) -> str:
        return "\n---\n".join(format_documents(hits).strip() or "(no passage matches)" for hits in results)

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        queries = self.queries_of(parameters)
        if isinstance(queries, str):
            return ToolResponse(text=queries), 0.0, {"query_count": 0, "status": "invalid"}
        async with self._semaphore():
            # a failure after the client's retries is raised: the step fails rather than the policy
            # reading an error message as search results
            results = await asyncio.to_thread(self.retriever.search, queries, self.topk)
        return (ToolResponse(text=self.format_results(results)), 0.0,
                {"query_count": len(queries), "status": "success", "total_results": sum(map(len, results))})
