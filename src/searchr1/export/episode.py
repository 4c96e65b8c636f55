"""One Search-R1 episode against any async token generator: the core of the veRL agent loop.

veRL's rollout hands an agent loop one prompt at a time and an async `generate(prompt_ids)` on a
vLLM/SGLang server; our own `searchr1.rollout.agent.Agent` drives a batch through a stateful
session. Both step their episodes through `searchr1.rollout.step.EpisodeStep` into a `Trajectory`,
so a policy trained under veRL sees the same tokens as one trained (or evaluated) by
`searchr1 train` / `searchr1 eval`. This module only adapts the server to the step:

    generate a turn of at most `step.budget(traj)` tokens from prompt + response so far
    cut it right after the first of the step's stop strings (tags: </search> or </answer>;
    tool_call: </tool_call>); tell EOS from a spent budget
    step.turn(...) -> done, or search the query / take the note, then step.observe(...)

Tokens are never re-tokenised from text: a turn keeps exactly the ids the engine sampled, up to
and including the token that completed the stop string (an engine started with
`skip_tokenizer_init`, as veRL starts vLLM, cannot stop on a string, so the cut is done here and
anything sampled after it is discarded).

Nothing here imports veRL (the unit tests run it with a fake server); `verl_agent` adapts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from searchr1.protocol import STOP_STRINGS
from searchr1.retrieval.base import Hit
from searchr1.rollout.generator import Sample, find_stop
from searchr1.rollout.step import EpisodeStep
from searchr1.rollout.trajectory import Trajectory

#: async (context ids, max new tokens) -> (sampled ids, their log-probs or None)
GenerateFn = Callable[[list[int], int], Awaitable[tuple[list[int], list[float] | None]]]
#: async (query) -> hits, best first
SearchFn = Callable[[str], Awaitable[Sequence[Hit]]]


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


def server_sample(sampled: Sequence[int], logprobs: Sequence[float] | None, budget: int,
                  eos_ids: set[int] | frozenset[int], decode_fn: Callable[[Sequence[int]], str],
                  stop: Sequence[str] = STOP_STRINGS) -> Sample:
    """What a server that knows no stop strings sampled for one turn, as our generators return a
    turn: cut after the first stop string ("stop"), else ended by an EOS id or by stopping short of
    the budget ("eos"), else the budget is spent ("length"). Missing log-probs are 0.0."""
    sampled = list(sampled)[:budget]
    n, stopped = cut_at_stop(sampled, decode_fn, stop)
    ids = sampled[:n]
    lps = [float(x) for x in logprobs[:n]] if logprobs is not None else [0.0] * n
    if stopped:
        return Sample(ids, lps, "stop", find_stop(decode_fn(ids), stop))
    eos = bool((ids and ids[-1] in eos_ids) or len(sampled) < budget)
    return Sample(ids, lps, "eos" if eos else "length")


async def run_episode(traj: Trajectory, generate: GenerateFn, search: SearchFn, step: EpisodeStep,
                      eos_ids: set[int] | frozenset[int] = frozenset()) -> Trajectory:
    """Play one episode from `traj.prompt_ids` by `step`'s rules (see the module docstring); fills
    `traj` in place and returns it."""
    if step.cfg.response_prefix:
        raise ValueError("the veRL episode does not force a response prefix (agent.response_prefix must be empty)")
    while True:
        budget = step.budget(traj)
        sampled, logprobs = await generate(traj.prompt_ids + traj.response_ids, budget)
        decision = step.turn(traj, server_sample(sampled, logprobs, budget, eos_ids, step.decode, step.stop_strings))
        if decision.done:
            return traj
        hits = list(await search(decision.query)) if decision.outcome == "search" else None
        if step.observe(traj, hits) is None:
            return traj


def run_episode_sync(*args: Any, **kwargs: Any) -> Trajectory:
    """`run_episode` from synchronous code (tests, scripts)."""
    return asyncio.run(run_episode(*args, **kwargs))
