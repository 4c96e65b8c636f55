"""One Search-R1 episode against any async token generator: the core of the veRL agent loop.

veRL's rollout hands an agent loop one prompt at a time and an async `generate(prompt_ids)` on a
vLLM/SGLang server; our own `searchr1.rollout.agent.Agent` drives a batch through a stateful
session. This module plays one episode by the same rules as that agent, so a policy trained under
veRL sees the same text as one trained (or evaluated) by `searchr1 train` / `searchr1 eval`:

    generate a turn (at most max_turn_tokens), cut right after the first </search> or </answer>
      </answer> q        -> done (answer)
      EOS                -> done (eos)
      response budget    -> done (length)
      final turn         -> done (max_turns): after max_turns action turns the next turn ends it
      </search> q        -> append "\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n"
      anything else      -> append Search-R1's invalid-action note

Generated tokens get loss mask 1, injected tokens 0. Tokens are never re-tokenised from text: a
turn keeps exactly the ids the engine sampled, up to and including the token that completed the
stop string (an engine started with `skip_tokenizer_init`, as veRL starts vLLM, cannot stop on a
string, so the cut is done here and anything sampled after it is discarded).

Nothing here imports veRL (the unit tests run it with a fake generator); `verl_agent` adapts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from searchr1.protocol import INVALID_ACTION_NOTE, STOP_STRINGS, parse_action
from searchr1.rollout.agent import ENDINGS, encode_text, observation_ids, turn_outcome
from searchr1.rollout.settings import AgentConfig

#: async (context ids, max new tokens) -> (sampled ids, their log-probs or None)
GenerateFn = Callable[[list[int], int], Awaitable[tuple[list[int], list[float] | None]]]
#: async (query) -> hits (Hit objects or Search-R1 result dicts), best first
SearchFn = Callable[[str], Awaitable[Sequence[Any]]]


@dataclass
class Episode:
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] | None = None
    turns: int = 0  # generation turns
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    stop_reason: str = ""  # answer | eos | length | max_turns

    def append(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None) -> None:
        self.response_ids += list(ids)
        self.response_mask += [mask] * len(ids)
        if self.response_logprobs is not None:
            self.response_logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


def decode(tokenizer, ids: Sequence[int]) -> str:
    # Special tokens (EOS, <|im_end|>) are structure, not text (as in our agent and veRL's reward).
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def cut_at_stop(ids: Sequence[int], decode_fn: Callable[[Sequence[int]], str],
                stop: Sequence[str] = STOP_STRINGS) -> tuple[int, bool]:
    """(n, True) with n the length of the shortest prefix of `ids` whose text contains a stop
    string, or (len(ids), False) when there is none.

    Containing a stop string is monotone in the prefix length, so a binary search needs
    O(log n) decodes of prefixes.
    """
    if not ids or not any(s in decode_fn(ids) for s in stop):
        return len(ids), False
    lo, hi = 1, len(ids)  # invariant: prefix hi contains a stop string, prefix lo - 1 does not
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode_fn(ids[:mid]) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return hi, True


async def run_episode(prompt_ids: Sequence[int], generate: GenerateFn, search: SearchFn, tokenizer,
                      settings: AgentConfig, eos_ids: set[int] | frozenset[int] = frozenset(),
                      with_logprobs: bool = False) -> Episode:
    """Play one episode from `prompt_ids`; see the module docstring for the rules. `settings`: the
    agent's limits (max_turns, max_turn_tokens, max_obs_tokens, max_response_tokens)."""
    if settings.response_prefix:
        raise ValueError("the veRL episode does not force a response prefix (agent.response_prefix must be empty)")
    ep = Episode(response_logprobs=[] if with_logprobs else None)
    note = encode_text(tokenizer, INVALID_ACTION_NOTE)
    prompt = list(prompt_ids)
    while True:
        budget = min(settings.max_turn_tokens, settings.max_response_tokens - len(ep.response_ids))
        sampled, logprobs = await generate(prompt + ep.response_ids, budget)
        sampled = list(sampled)[:budget]
        n, stopped = cut_at_stop(sampled, lambda ids: decode(tokenizer, ids))
        ids = sampled[:n]
        ep.append(ids, 1, list(logprobs)[:n] if (with_logprobs and logprobs is not None) else None)
        ep.turns += 1
        action = parse_action(decode(tokenizer, ids))
        hit_eos = not stopped and bool((ids and ids[-1] in eos_ids) or len(sampled) < budget)
        outcome = turn_outcome(action.kind, hit_eos, len(ep.response_ids), ep.turns, settings.max_turns,
                               settings.max_response_tokens)
        if outcome in ENDINGS:
            ep.stop_reason = outcome
            if outcome == "answer":
                ep.answer = action.content
            return ep
        room = settings.max_response_tokens - len(ep.response_ids)
        if outcome == "search":
            ep.queries.append(action.content)
            hits = await search(action.content)
            ep.append(observation_ids(tokenizer, hits, min(settings.max_obs_tokens, room)), 0)
        else:
            ep.append(note[:room], 0)
        if len(ep.response_ids) >= settings.max_response_tokens:
            ep.stop_reason = "length"  # the injected tokens filled the response
            return ep


def run_episode_sync(*args, **kwargs) -> Episode:
    """`run_episode` from synchronous code (tests, scripts)."""
    return asyncio.run(run_episode(*args, **kwargs))
