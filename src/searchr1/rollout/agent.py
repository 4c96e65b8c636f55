"""The multi-turn search agent: an explicit state machine over a batch of episodes.

Each live episode is in one state per turn:

    GENERATE --</answer>----------------------------> DONE(answer)
        |-----EOS / response budget / final turn----> DONE(eos | length | max_turns)
        |-----</search> q------> RETRIEVE ----------> GENERATE (with <information> appended)
        '-----anything else----> GENERATE (with Search-R1's invalid-action note appended)

Episodes run in a pool (continuous batching): the generator advances every live episode a token
at a time, and as soon as one episode's turn ends the agent applies the environment to it alone
(the searches that ended in the same step go to the retriever in one batched call) and starts its
next turn, or, when the episode is over, starts the next waiting episode in its place. After
`max_turns` action turns comes the final turn: whatever it says ends the episode (a search there
is not executed, as in Search-R1).

Tokens are appended to the trajectory as ids, never re-tokenised from text, with their policy mask
set at the moment they are appended: 1 for what the policy sampled, 0 for what the environment
injected. A retrieval failure is retried, then raised: an episode never silently continues with
empty information.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from searchr1.errors import RetrieverError, RetrieverRequestError
from searchr1.protocol import (INVALID_ACTION_NOTE, OBSERVATION_CLOSE, OBSERVATION_OPEN, STOP_STRINGS,
                               format_documents, parse_action, truncate_tokens)
from searchr1.retrieval.base import Hit, Retriever
from searchr1.rollout.generator import Generator, Sample, SamplingParams
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.trajectory import Trajectory, Turn

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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


#: outcomes of `turn_outcome` that end the episode (they are its stop_reason)
ENDINGS = ("answer", "eos", "length", "max_turns")


def turn_outcome(action: str, eos: bool, response_tokens: int, turns: int, max_turns: int,
                 max_response_tokens: int) -> str:
    """What follows a generated turn, by the rules in the module docstring, first match wins:
    "answer" (the turn answered), "eos" (the policy ended the sequence), "length" (the response
    budget is spent), "max_turns" (that was the final turn), else "search" (retrieve, inject the
    documents) or "invalid" (inject the invalid-action note). `action` is `parse_action(...).kind`,
    `turns` counts the turns generated so far, this one included. Both this batched agent and the
    veRL episode (`searchr1.export.episode`) step by it."""
    if action == "answer":
        return "answer"
    if eos:
        return "eos"
    if response_tokens >= max_response_tokens:
        return "length"
    if turns > max_turns:
        return "max_turns"
    return "search" if action == "search" else "invalid"


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def observation_ids(tokenizer, hits: Sequence[Hit | Mapping[str, Any]], max_tokens: int, head: list[int] | None = None,
                    tail: list[int] | None = None) -> list[int]:
    """`\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n` as ids, at most max_tokens:
    the documents are cut, the tags kept (Search-R1 cuts the whole block, closing tag included).
    `head` / `tail`: the encoded tags, when the caller keeps them."""
    head = encode_text(tokenizer, OBSERVATION_OPEN) if head is None else head
    tail = encode_text(tokenizer, OBSERVATION_CLOSE) if tail is None else tail
    docs = encode_text(tokenizer, format_documents(hits).strip())
    room = max_tokens - len(head) - len(tail)
    if room <= 0:
        return (head + tail)[:max_tokens]
    return head + truncate_tokens(docs, room) + tail


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids; a BOS is prepended when the tokenizer normally adds one and the text (e.g. a
    chat template's output, which writes its own) does not start with it."""
    ids = encode_text(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == bos:
            ids = [bos, *ids]
    return ids


def new_trajectory(tokenizer, prompt_text: str, question: str = "", golden_answers: Sequence[str] = (),
                   id: str = "", group: int = 0, meta: dict | None = None) -> Trajectory:
    return Trajectory(question=question, golden_answers=list(golden_answers),
                      prompt_ids=encode_prompt(tokenizer, prompt_text), id=id, group=group,
                      prompt_text=prompt_text, meta=dict(meta or {}))


def search_with_retries(retriever: Retriever, queries: list[str], k: int, attempts: int,
                        backoff_s: float) -> list[list[Hit]]:
    """`retriever.search`, retried on failure with exponential backoff; raises RetrieverError."""
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
        self._head = encode_text(self.tokenizer, OBSERVATION_OPEN)
        self._tail = encode_text(self.tokenizer, OBSERVATION_CLOSE)
        self._note = encode_text(self.tokenizer, INVALID_ACTION_NOTE)

    def run(self, trajectories: list[Trajectory], params: SamplingParams, pool: int | None = None,
            on_progress: Callable[[RolloutStats], None] | None = None) -> RolloutStats:
        """Play every episode to its end, filling the trajectories in place.

        At most `pool` episodes are live at once (None: all of them); when one ends, the next
        waiting episode starts in its place, so the generator's batch stays full until the queue
        drains. `on_progress(stats)` is called after every step that ended a turn.
        """
        cfg, stats = self.cfg, RolloutStats()
        pool = len(trajectories) if pool is None else pool
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        start = time.perf_counter()
        session = self.generator.session([t.prompt_ids for t in trajectories], params)
        prefix = encode_text(self.tokenizer, cfg.response_prefix) if cfg.response_prefix else []
        waiting, live = deque(range(len(trajectories))), set()
        drain_start = None

        def submit(i: int, ids: list[int]) -> None:
            room = cfg.max_response_tokens - len(trajectories[i].response_ids)
            session.submit(i, ids, min(cfg.max_turn_tokens, room), STOP_STRINGS)

        try:
            while waiting or live:
                while waiting and len(live) < pool:
                    i = waiting.popleft()
                    trajectories[i].append(prefix, 0)
                    submit(i, prefix)
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
        """Record the turns that ended and apply the environment: (row -> tokens to append before the
        row's next turn, rows whose episode ended)."""
        cfg = self.cfg
        appended, searching, ended = {}, [], []
        for i, sample in samples.items():
            traj = trajectories[i]
            text = self._decode(sample.token_ids)
            traj.append(sample.token_ids, 1, sample.logprobs)
            stats.generated_tokens += len(sample.token_ids)
            stats.turns += 1
            # the forced prefix belongs to the first turn's action ("<search>" + " query </search>")
            action = parse_action(text if traj.turns else cfg.response_prefix + text)
            traj.turns.append(Turn(text=text, action=action.kind, content=action.content,
                                   generated_tokens=len(sample.token_ids), finish=sample.finish))
            outcome = turn_outcome(action.kind, sample.finish == "eos", len(traj.response_ids),
                                   len(traj.turns), cfg.max_turns, cfg.max_response_tokens)
            if outcome in ENDINGS:
                traj.stop_reason = outcome
                if outcome == "answer":
                    traj.answer = action.content
                ended.append(i)
            elif outcome == "search":
                searching.append(i)
            else:
                room = cfg.max_response_tokens - len(traj.response_ids)
                appended[i] = self._inject(traj, self._note[:room])
        if searching:
            self._retrieve(trajectories, searching, appended, stats)
        for i in [i for i in appended if len(trajectories[i].response_ids) >= cfg.max_response_tokens]:
            trajectories[i].stop_reason = "length"  # the injected tokens filled the response
            appended.pop(i)
            ended.append(i)
        for i in ended:
            trajectories[i].response_text = self._decode(trajectories[i].response_ids)
        return appended, ended

    # ------------------------------------------------------------------------- environment steps

    def _retrieve(self, trajectories: list[Trajectory], searching: list[int], appended: dict[int, list[int]],
                  stats: RolloutStats) -> None:
        cfg = self.cfg
        queries = [trajectories[i].turns[-1].content for i in searching]
        t0 = time.perf_counter()
        results = search_with_retries(self.retriever, queries, cfg.topk, cfg.retrieval_attempts,
                                      cfg.retrieval_backoff_s)
        stats.retrieve_seconds += time.perf_counter() - t0
        stats.retrieval_calls += 1
        stats.searches += len(queries)
        for i, hits in zip(searching, results):
            traj = trajectories[i]
            room = cfg.max_response_tokens - len(traj.response_ids)
            obs = observation_ids(self.tokenizer, hits, min(cfg.max_obs_tokens, room), self._head, self._tail)
            traj.turns[-1].doc_ids = [h.doc_id for h in hits]
            appended[i] = self._inject(traj, obs)

    def _decode(self, ids: list[int]) -> str:
        # Special tokens (EOS, <|im_end|>) are structure, not text: a reward that checks the tag
        # sequence must not see them after </answer>.
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _inject(self, traj: Trajectory, ids: list[int]) -> list[int]:
        """Append environment tokens (policy mask 0) to the trajectory and record them on its last turn."""
        traj.append(ids, 0)
        turn = traj.turns[-1]
        turn.observation = self._decode(ids)
        turn.observation_tokens = len(ids)
        return ids
