"""The agent's state machine, masks and retrieval handling, on a scripted model with known outputs."""

from __future__ import annotations

import pytest

from fakes import ScriptedLM, char_tokenizer, continue_script, scripted_logprob
from searchr1.errors import RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from searchr1.protocol import INVALID_ACTION_NOTE, format_observation
from searchr1.retrieval.base import Hit
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.settings import AgentConfig

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


class FakeRetriever:
    """Returns one passage per query that echoes it; fails the first `failures` calls with `error`."""

    def __init__(self, failures: int = 0, error: Exception | None = None, text: str = "") -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.failures, self.error, self.text = failures, error, text

    def search(self, queries, k):
        self.calls.append((list(queries), k))
        if len(self.calls) <= self.failures:
            raise self.error
        return [[Hit(f"id-{q}", f"About {q}", self.text or f"{q} are nice.", 1.0)] for q in queries]


def policy(first: str, after_info: str):
    return lambda ctx: continue_script(ctx, after_info if "<information>" in ctx else first)


def run(tok, pol, retriever, n=1, **cfg):
    gen = EngineGenerator(ScriptedLM(tok, pol), tok)
    trajs = [new_trajectory(tok, f"Q{i}?", question=f"Q{i}", golden_answers=["dogs"]) for i in range(n)]
    cfg = AgentConfig(**{"retrieval_backoff_s": 0.0, **cfg})
    stats = Agent(gen, retriever, cfg).run(trajs, GREEDY)
    for t in trajs:
        assert len(t.response_ids) == len(t.policy_mask) == len(t.logprobs)
        assert t.response_text == tok.decode(t.response_ids, skip_special_tokens=True)
    return trajs, stats


def runs(tok, traj):
    """The response as (mask, text) runs of equal loss mask."""
    out, start = [], 0
    for i in range(1, len(traj.policy_mask) + 1):
        if i == len(traj.policy_mask) or traj.policy_mask[i] != traj.policy_mask[start]:
            out.append((traj.policy_mask[start], tok.decode(traj.response_ids[start:i])))
            start = i
    return out


def test_search_then_answer_masks_every_token(tok):
    retriever = FakeRetriever()
    trajs, stats = run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), retriever, n=2)
    obs = format_observation([Hit("id-cats", "About cats", "cats are nice.", 1.0)])
    for t in trajs:
        assert runs(tok, t) == [(1, "<search> cats </search>"), (0, obs), (1, "<answer> dogs </answer>")]
        assert [(x.action, x.content) for x in t.turns] == [("search", "cats"), ("answer", "dogs")]
        assert t.turns[0].doc_ids == ["id-cats"] and t.turns[0].observation == obs
        assert (t.stop_reason, t.answer, t.num_searches) == ("answer", "dogs", 1)
        lp = scripted_logprob(len(tok))
        assert [x for x, m in zip(t.logprobs, t.policy_mask) if m] == pytest.approx([lp] * sum(t.policy_mask), abs=1e-6)
        assert all(x == 0.0 for x, m in zip(t.logprobs, t.policy_mask) if not m)
    # both episodes' queries went to the retriever in one call, at the configured depth
    assert retriever.calls == [(["cats", "cats"], 3)]
    assert (stats.searches, stats.retrieval_calls, stats.turns) == (2, 1, 4)  # turns summed over episodes
    assert stats.injected_tokens == 2 * len(tok.encode(obs))


def test_invalid_turns_get_the_note_then_the_final_turn_ends_it(tok):
    trajs, _ = run(tok, policy("I am thinking very hard", ""), FakeRetriever(), max_turns=2, max_turn_tokens=5)
    t = trajs[0]
    assert [x.action for x in t.turns] == ["invalid", "invalid", "invalid"]
    assert t.stop_reason == "max_turns" and t.answer is None
    # (the scripted model restarts its sentence after each note)
    assert runs(tok, t) == [(1, "I am "), (0, INVALID_ACTION_NOTE), (1, "I am "), (0, INVALID_ACTION_NOTE),
                            (1, "I am ")]


def test_search_budget_then_forced_final_turn(tok):
    retriever = FakeRetriever()
    pol = lambda ctx: continue_script(ctx, "<search> more </search>")
    trajs, _ = run(tok, pol, retriever, max_turns=2)
    t = trajs[0]
    assert [x.action for x in t.turns] == ["search"] * 3
    assert len(retriever.calls) == 2 and t.num_searches == 3  # the third search was not executed
    assert t.turns[-1].observation == "" and t.stop_reason == "max_turns"


def test_eos_without_answer(tok):
    trajs, _ = run(tok, policy("no idea", ""), FakeRetriever())
    assert trajs[0].stop_reason == "eos" and trajs[0].answer is None
    assert trajs[0].response_ids[-1] == tok.eos_token_id and trajs[0].policy_mask[-1] == 1


def test_response_budget(tok):
    trajs, _ = run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), FakeRetriever(),
                   max_response_tokens=40)
    t = trajs[0]
    assert t.stop_reason == "length" and len(t.response_ids) == 40


def test_observation_is_cut_to_its_budget_keeping_the_tags(tok):
    trajs, _ = run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), FakeRetriever(text="x" * 500),
                   max_obs_tokens=60)
    obs = trajs[0].turns[0].observation
    assert len(tok.encode(obs)) == 60
    assert obs.startswith("\n\n<information>Doc 1(Title: ") and obs.endswith("x</information>\n\n")
    assert trajs[0].stop_reason == "answer"


def test_retrieval_failures_are_retried(tok):
    retriever = FakeRetriever(failures=2, error=RetrieverUnavailableError("down"))
    trajs, _ = run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), retriever)
    assert len(retriever.calls) == 3 and trajs[0].stop_reason == "answer"


def test_retrieval_failure_is_surfaced_not_swallowed(tok):
    retriever = FakeRetriever(failures=99, error=RetrieverUnavailableError("server down"))
    with pytest.raises(RetrieverError, match="after 3 attempts.*server down"):
        run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), retriever)
    assert len(retriever.calls) == 3


def test_rejected_request_is_not_retried(tok):
    retriever = FakeRetriever(failures=99, error=RetrieverRequestError("query too long"))
    with pytest.raises(RetrieverRequestError):
        run(tok, policy("<search> cats </search>", ""), retriever)
    assert len(retriever.calls) == 1


def test_wrong_number_of_results_is_an_error(tok):
    class Short(FakeRetriever):
        def search(self, queries, k):
            return []

    with pytest.raises(RetrieverError, match="0 result lists for 1 queries"):
        run(tok, policy("<search> cats </search>", ""), Short())


def test_no_search_mode_needs_no_retriever(tok):
    trajs, _ = run(tok, policy("<search> cats </search>", ""), None, max_turns=0)
    assert trajs[0].stop_reason == "max_turns" and trajs[0].num_searches == 1
    trajs, _ = run(tok, policy("<answer> dogs </answer>", ""), None, max_turns=0)
    assert trajs[0].answer == "dogs"
    with pytest.raises(ValueError, match="needs a retriever"):
        run(tok, policy("x", ""), None, max_turns=1)


def test_forced_response_prefix_is_injected_and_parsed_with_the_first_turn(tok):
    retriever = FakeRetriever()
    trajs, _ = run(tok, policy("<search> cats </search>", "<answer> dogs </answer>"), retriever,
                   response_prefix="<search>")
    t = trajs[0]
    obs = format_observation([Hit("id-cats", "About cats", "cats are nice.", 1.0)])
    # the model continues the tag it was given; the prefix itself is not the policy's (mask 0)
    assert runs(tok, t) == [(0, "<search>"), (1, " cats </search>"), (0, obs), (1, "<answer> dogs </answer>")]
    assert [(x.action, x.content) for x in t.turns] == [("search", "cats"), ("answer", "dogs")]
    assert retriever.calls == [(["cats"], 3)]


def varied(ctx: str) -> str | None:
    """Episodes of different lengths: question k searches k times (k = the digit in it), then answers."""
    k = int(next(c for c in ctx if c.isdigit()))
    if ctx.count("<information>") < k % 4:
        return continue_script(ctx, "<search> q" + "x" * (3 * k) + " </search>")
    return continue_script(ctx, "<answer> dogs </answer>")


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_a_pool_smaller_than_the_batch_plays_every_episode_exactly_as_all_at_once(tok, pool):
    def play(pool):
        lm = ScriptedLM(tok, varied)
        trajs = [new_trajectory(tok, f"Q{i}?", question=f"Q{i}", golden_answers=["dogs"]) for i in range(7)]
        stats = Agent(EngineGenerator(lm, tok), FakeRetriever(), AgentConfig(retrieval_backoff_s=0.0)).run(
            trajs, GREEDY, pool=pool)
        return trajs, stats, lm

    reference, _, _ = play(None)
    trajs, stats, lm = play(pool)
    for a, b in zip(reference, trajs):
        assert (a.response_ids, a.policy_mask, a.logprobs, a.stop_reason) == (b.response_ids, b.policy_mask,
                                                                             b.logprobs, b.stop_reason)
    assert [t.num_searches for t in trajs] == [0, 1, 2, 3, 0, 1, 2]
    assert (stats.max_live, stats.episodes) == (pool, 7)
    assert max(batch for batch, width in lm.calls if width == 1) <= pool  # never more rows than the pool


def test_the_next_episode_joins_as_soon_as_one_ends(tok):
    # pool 2: Q0 answers at once, so Q2 starts while Q1 is still searching
    lm = ScriptedLM(tok, varied)
    trajs = [new_trajectory(tok, f"Q{i}?", question=f"Q{i}", golden_answers=["dogs"]) for i in (0, 3, 1)]
    order = []
    Agent(EngineGenerator(lm, tok), FakeRetriever(), AgentConfig(retrieval_backoff_s=0.0)).run(
        trajs, GREEDY, pool=2, on_progress=lambda s: order.append((s.episodes, s.max_live)))
    assert [t.stop_reason for t in trajs] == ["answer"] * 3
    # the decode batch stayed at two rows after the first episode ended, until the queue drained
    decodes = [batch for batch, width in lm.calls if width == 1]
    first_answer = len("<answer> dogs </answer>") - 1  # decode passes of Q0's answer after its prefill
    # Q0 and Q3 decode together; the pass right after Q0 ended has two rows again: Q1 joined
    # (without it, Q3 would decode alone)
    assert set(decodes[:first_answer]) == {2} and decodes[first_answer] == 2
    assert order[-1] == (3, 2)


def test_pool_must_be_positive(tok):
    with pytest.raises(ValueError, match="pool must be >= 1"):
        Agent(EngineGenerator(ScriptedLM(tok, varied), tok), FakeRetriever(), AgentConfig()).run(
            [new_trajectory(tok, "Q1?")], GREEDY, pool=0)


def test_an_http_retriever_is_called_once_its_own_retries_do_not_nest():
    import httpx

    from searchr1.retrieval.client import HttpRetriever
    from searchr1.rollout.agent import search_with_retries

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    client = HttpRetriever("http://retr.test:8000", retries=1, backoff_s=0)
    client._client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(RetrieverUnavailableError, match="after 1 attempts"):
        search_with_retries(client, ["q"], 1, attempts=3, backoff_s=0)
    assert client.attempts == 2  # the client's 1 + 1 retries, not 3 x 2


def test_a_cached_http_retriever_is_still_the_client_to_the_agent_and_the_trainer(tmp_path):
    """Behind the query cache the HTTP client keeps its single retry loop, its outage wait and its
    count of cut queries (the cache forwards what it does not implement)."""
    import httpx

    from searchr1.retrieval.cache import CachedRetriever, QueryCache
    from searchr1.retrieval.client import HttpRetriever
    from searchr1.rollout.agent import search_with_retries

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    client = HttpRetriever("http://retr.test:8000", retries=1, backoff_s=0)
    client._client = httpx.Client(transport=httpx.MockTransport(refuse))
    cached = CachedRetriever(client, QueryCache(tmp_path / "c.sqlite"), "ns")
    assert cached.retries_itself and cached.queries_cut == 0
    assert cached.wait_until_healthy.__self__ is client
    with pytest.raises(RetrieverUnavailableError, match="after 1 attempts"):
        search_with_retries(cached, ["q"], 1, attempts=3, backoff_s=0)
    assert client.attempts == 2
    with pytest.raises(AttributeError):
        cached.no_such_operation
