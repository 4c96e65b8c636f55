"""The paper's search protocol as a veRL agent loop: `<search>` -> `<information>`, one response.

veRL 0.9 has no Search-R1 loop of its own (its search example was rewritten to JSON tool calls).
`SearchR1AgentLoop` plays each prompt as Search-R1 did, through `searchr1.export.episode` by the
rules of `searchr1.rollout.step` (those of our own agent): generate until `</search>` or
`</answer>`, retrieve the query's top-k passages from our server, append them inside
`<information>` with response mask 0, repeat, at most `max_turns` searches. The whole episode is
one assistant response, so veRL trains on the generated tokens only (`response_mask`), as the
paper does.

Registered through the YAML that `searchr1 export verl` writes (agent_loop.yaml):

    - name: searchr1_agent
      _target_: searchr1.export.verl_agent.SearchR1AgentLoop
      retrieval_url: http://HOST:8000
      topk: 3
      max_turns: 4
      max_turn_tokens: 500
      max_obs_tokens: 500
      chat: raw            # raw: the prompt text as is (base models, the paper); template: chat template
      protocol: tags       # tags (the paper's) or tool_call (the chat template's search tool; chat: template)

with `actor_rollout_ref.rollout.agent.agent_loop_config_path=agent_loop.yaml` and each row's
`agent_name` column (or `rollout.agent.default_agent_loop`) set to `searchr1_agent`. The whole
response is capped at veRL's `rollout.response_length`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.utils.profiler import simple_timer

from searchr1.export.episode import run_episode
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.settings import read_token
from searchr1.rollout.agent import search_with_retries
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep, encode_prompt
from searchr1.rollout.trajectory import Trajectory
from searchr1.toolcall import tools_for

log = logging.getLogger(__name__)

#: One HTTP client per settings per process: agent loops are created per sample.
_CLIENTS: dict[tuple, HttpRetriever] = {}


def _client(url: str, timeout_s: float, attempts: int, backoff_s: float, token_env: str) -> HttpRetriever:
    key = (url, timeout_s, attempts, backoff_s, token_env)
    if key not in _CLIENTS:
        # the client's retries are the only ones (search_with_retries calls an HttpRetriever once)
        _CLIENTS[key] = HttpRetriever(url, timeout_s=timeout_s, retries=attempts - 1, backoff_s=backoff_s,
                                      token=read_token(token_env, "retrieval_token_env"), learn_limits=True)
    return _CLIENTS[key]


def _eos_ids(tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
    return ids


def _prompt_text(messages: Any) -> str:
    """The text of a raw prompt: the user messages' contents (our export writes one user message)."""
    parts = [str(m.get("content", "")) for m in list(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not parts:
        raise ValueError("a searchr1_agent row needs a prompt with a user message")
    return "\n".join(parts)


class SearchR1AgentLoop(AgentLoopBase):
    """veRL agent loop running the Search-R1 text protocol against a `searchr1 serve` server."""

    def __init__(self, *args: Any, retrieval_url: str = "http://127.0.0.1:8000", topk: int = 3,
                 max_turns: int = 4, max_turn_tokens: int = 500, max_obs_tokens: int = 500,
                 chat: str = "raw", timeout_s: float = 30.0, retrieval_attempts: int = 3,
                 retrieval_backoff_s: float = 0.5, retrieval_token_env: str = "", protocol: str = "tags",
                 name: str | None = None,
                 tools: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if chat not in ("raw", "template"):
            raise ValueError(f"searchr1_agent: chat must be 'raw' or 'template', got {chat!r}")
        if protocol == "tool_call" and chat != "template":
            raise ValueError("searchr1_agent: protocol tool_call lists the search tool in the chat template "
                             "(chat: template)")
        self.tools = tools_for(protocol)
        self.chat = chat
        self.topk = int(topk)
        self.retrieval_url = retrieval_url
        self.timeout_s = float(timeout_s)
        self.retrieval_attempts = int(retrieval_attempts)
        self.retrieval_backoff_s = float(retrieval_backoff_s)
        self.retrieval_token_env = str(retrieval_token_env)
        self.response_length = int(self.rollout_config.response_length)
        self.step = EpisodeStep(self.tokenizer, AgentConfig(
            max_turns=int(max_turns), max_turn_tokens=int(max_turn_tokens), max_obs_tokens=int(max_obs_tokens),
            max_response_tokens=self.response_length, protocol=protocol))

    async def _prompt_ids(self, messages: list) -> list[int]:
        if self.tools:  # the tool-call protocol: the template lists the search tool, as in our own agent
            text = self.tokenizer.apply_chat_template(list(messages), tools=self.tools, add_generation_prompt=True,
                                                      tokenize=False)
            return self._cap_text_prompt_length(encode_prompt(self.tokenizer, text))
        if self.chat == "template":
            return await self.ct_build_initial_tokens(messages)
        ids = encode_prompt(self.tokenizer, _prompt_text(messages))
        return self._cap_text_prompt_length(ids)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        prompt_ids = await self._prompt_ids(list(kwargs["raw_prompt"]))
        request_id = uuid4().hex  # sticky: every turn of an episode goes to the same server (prefix cache)
        metrics: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        want_logprobs = bool(sampling_params.get("logprobs"))
        retriever = _client(self.retrieval_url, self.timeout_s, self.retrieval_attempts, self.retrieval_backoff_s,
                            self.retrieval_token_env)

        async def generate(context: list[int], max_tokens: int):
            with simple_timer("generate_sequences", metrics):
                out = await self.server_manager.generate(
                    request_id=request_id, prompt_ids=context,
                    sampling_params={**sampling_params, "max_tokens": max_tokens})
            extra.update(out.extra_fields or {})
            return out.token_ids, out.log_probs

        async def search(query: str):
            with simple_timer("tool_calls", metrics):
                results = await asyncio.to_thread(search_with_retries, retriever, [query], self.topk,
                                                  self.retrieval_attempts, self.retrieval_backoff_s)
            return results[0]

        traj = await run_episode(Trajectory(question="", golden_answers=[], prompt_ids=prompt_ids), generate, search,
                                 self.step, eos_ids=_eos_ids(self.tokenizer))
        n = self.response_length
        extra.update({"turn_scores": [], "tool_rewards": [], "searchr1_searches": traj.num_searches,
                      "searchr1_stop_reason": traj.stop_reason})
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=traj.response_ids[:n],
            response_mask=traj.policy_mask[:n],
            response_logprobs=traj.logprobs[:n] if want_logprobs else None,
            num_turns=2 * len(traj.turns),  # user/assistant exchanges, as veRL counts turns
            metrics=metrics,
            extra_fields=extra,
        )
