"""The multi-turn search agent: an explicit state machine over a batch of episodes.

Each live episode is in one state per turn:

    GENERATE --</answer>----------------------------> DONE(answer)
        |-----EOS / response budget / final turn----> DONE(eos | length | max_turns)
        |-----</search> q------> RETRIEVE ----------> GENERATE (with <information> appended)
        '-----anything else----> GENERATE (with Search-R1's invalid-action note appended)

The transitions are `searchr1.rollout.step.EpisodeStep`'s, the same the veRL agent loop takes;
this module schedules them. Episodes run in a pool (continuous batching): the generator advances
every live episode a token at a time, and as soon as one episode's turn ends the agent steps it
alone (the searches that ended in the same step go to the retriever in one batched call) and starts
its next turn, or, when the episode is over, starts the next waiting episode in its place.

A retrieval failure is retried, then raised: an episode never silently continues with empty
information. An HTTP retriever retries by itself (`HttpRetriever`: backoff, Retry-After), so it is
called once here: retry loops do not nest. A training run that gets `RetrieverUnavailableError`
checkpoints and waits for the server (`searchr1.train.trainer`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from searchr1.errors import RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.retrieval.base import Hit, Retriever
from searchr1.rollout.generator import Generator, Sample, SamplingParams
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep, encode_prompt
from searchr1.rollout.trajectory import Trajectory


@dataclass
class RolloutStats:
    seconds: float = 0.0
    generate_seconds: float = 0.0
    retrieve_seconds: float = 0.0
    turns: int = 0  # generation turns, summed over episodes
    steps: int = 0  # generator steps (one decoded token for every generating episode)
    episodes: int = 0  # episodes ended
    max_live: int = 0  # most episodes live at once
    drain_seconds: float = 0.0  # the tail: from when the queue emptied and the pool stopped being full to the end
    retrieval_calls: int = 0
    searches: int = 0
    generated_tokens: int = 0  # mask-1 tokens
    injected_tokens: int = 0  # mask-0 tokens
    queries_cut: int = 0  # over-long queries the HTTP retriever cut to the server's limit

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def new_trajectory(tokenizer, prompt_text: str, question: str = "", golden_answers: Sequence[str] = (),
                   id: str = "", group: int = 0, meta: dict | None = None) -> Trajectory:
    return Trajectory(question=question, golden_answers=list(golden_answers),
                      prompt_ids=encode_prompt(tokenizer, prompt_text), id=id, group=group,
                      prompt_text=prompt_text, meta=dict(meta or {}))


def search_with_retries(retriever: Retriever, queries: list[str], k: int, attempts: int,
                        backoff_s: float) -> list[list[Hit]]:
    """`retriever.search`, retried on failure with exponential backoff; raises RetrieverError.

    A retriever with its own retry policy (`retries_itself`: the HTTP client, also behind the
    query cache) is tried once."""
    if getattr(retriever, "retries_itself", False):
        attempts = 1
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            results = retriever.search(queries, k)
        except RetrieverRequestError:
            raise  # the server rejected the request itself: retrying sends the same request
        except Exception as e:  # noqa: BLE001 - any backend failure is retried, then surfaced
            last = e
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
            continue
        if len(results) != len(queries):
            raise RetrieverError(f"retriever returned {len(results)} result lists for {len(queries)} queries")
        return results
    if isinstance(last, RetrieverUnavailableError):  # the trainer waits for an unreachable server
        raise RetrieverUnavailableError(f"retrieval failed after {attempts} attempts: {last}") from last
    raise RetrieverError(f"retrieval failed after {attempts} attempts: {type(last).__name__}: {last}") from last


class Agent:
    """Runs batches of episodes of one generator against one retriever."""

    def __init__(self, generator: Generator, retriever: Retriever | None, cfg: AgentConfig) -> None:
        if retriever is None and cfg.max_turns > 0:
            raise ValueError("an agent that may search (max_turns > 0) needs a retriever")
        self.generator = generator
        self.retriever = retriever
        self.cfg = cfg
        self.tokenizer = generator.tokenizer
        self.step = EpisodeStep(self.tokenizer, cfg)

    def run(self, trajectories: list[Trajectory], params: SamplingParams, pool: int | None = None,
            on_progress: Callable[[RolloutStats], None] | None = None) -> RolloutStats:
        """Play every episode to its end, filling the trajectories in place.

        At most `pool` episodes are live at once (None: all of them); when one ends, the next
        waiting episode starts in its place, so the generator's batch stays full until the queue
        drains. `on_progress(stats)` is called after every step that ended a turn. A trajectory
        that already has a response (a branch of a tree, `searchr1.rollout.tree`) continues from
        its last token: its response so far is part of its row's context.
        """
        stats = RolloutStats()
        pool = len(trajectories) if pool is None else pool
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        start = time.perf_counter()
        session = self.generator.session([t.prompt_ids + t.response_ids for t in trajectories], params)
        waiting, live = deque(range(len(trajectories))), set()
        drain_start = None

        def submit(i: int, ids: list[int]) -> None:
            session.submit(i, ids, self.step.budget(trajectories[i]), self.step.stop_strings)

        try:
            while waiting or live:
                while waiting and len(live) < pool:
                    i = waiting.popleft()
                    submit(i, [] if trajectories[i].response_ids else self.step.begin(trajectories[i]))
                    live.add(i)
                stats.max_live = max(stats.max_live, len(live))
                t0 = time.perf_counter()
                if drain_start is None and not waiting and len(live) < pool:
                    drain_start = t0
                samples = session.step()
                stats.generate_seconds += time.perf_counter() - t0
                stats.steps += 1
                if not samples:
                    continue
                appended, ended = self._play(trajectories, samples, stats)
                for i, ids in appended.items():
                    submit(i, ids)
                session.finish(ended)
                live.difference_update(ended)
                stats.episodes += len(ended)
                if on_progress:
                    on_progress(stats)
        finally:
            session.close()
        stats.injected_tokens = sum(len(t.policy_mask) - sum(t.policy_mask) for t in trajectories)
        stats.seconds = time.perf_counter() - start
        stats.drain_seconds = 0.0 if drain_start is None else start + stats.seconds - drain_start
        return stats

    def _play(self, trajectories: list[Trajectory], samples: Mapping[int, Sample],
              stats: RolloutStats) -> tuple[dict[int, list[int]], list[int]]:
        """Step every row whose turn ended; the searches of all of them go to the retriever in one
        call. Returns (row -> tokens to feed before the row's next turn, rows whose episode ended)."""
        appended, ended, filled, searching = {}, [], [], []

        def observe(i: int, hits: list[Hit] | None = None) -> None:
            ids = self.step.observe(trajectories[i], hits)
            if ids is None:
                filled.append(i)  # the injected tokens filled the response
            else:
                appended[i] = ids

        for i, sample in samples.items():
            stats.generated_tokens += len(sample.token_ids)
            stats.turns += 1
            decision = self.step.turn(trajectories[i], sample)
            if decision.done:
                ended.append(i)
            elif decision.outcome == "search":
                searching.append((i, decision.query))
            else:
                observe(i)
        if searching:
            for (i, _), hits in zip(searching, self._search([q for _, q in searching], stats)):
                observe(i, hits)
        return appended, ended + filled

    def _search(self, queries: list[str], stats: RolloutStats) -> list[list[Hit]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        cut_before = getattr(self.retriever, "queries_cut", 0)
        results = search_with_retries(self.retriever, queries, cfg.topk, cfg.retrieval_attempts,
                                      cfg.retrieval_backoff_s)
        stats.queries_cut += getattr(self.retriever, "queries_cut", 0) - cut_before
        stats.retrieve_seconds += time.perf_counter() - t0
        stats.retrieval_calls += 1
        stats.searches += len(queries)
        return results
