"""Web search over real HTTP against stub APIs on 127.0.0.1 (tests/web_stubs.py: each speaks its
provider's documented JSON), opened the way users open it (`retriever.method=...`): success, 429
with Retry-After, auth failure, timeout, malformed JSON; `searchr1 serve` fronting a web backend;
and an evaluation through the query cache, replayed offline with the stub stopped."""

from __future__ import annotations

import json
import re

import pytest
import requests

from fakes import ScriptedLM, char_tokenizer, continue_script
from searchr1.config import load_config
from searchr1.errors import RetrieverUnavailableError
from searchr1.retrieval.cache import CacheMissError
from searchr1.retrieval.local import open_retriever
from searchr1.retrieval.web import WebSearchAuthError, WebSearchQuotaError, WebSearchReplyError
from searchr1.settings import Config
from web_stubs import KEYS, StubSearchAPI

PROVIDERS = ["serpapi", "serper", "brave", "tavily"]
KEY = "test-key-not-real"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for env in KEYS.values():
        monkeypatch.setenv(env, KEY)


def config(provider: str, stub: StubSearchAPI, cache, *extra: str) -> Config:
    return load_config(Config, None, [
        f"retriever.method={provider}", f"retriever.web.{provider}.url={stub.url}", f"retriever.cache.path={cache}",
        "retriever.web.backoff_s=0.05", "retriever.web.retries=2", f"retriever.web.{provider}.requests_per_s=0",
        *extra])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_success_through_the_cache(provider, tmp_path):
    with StubSearchAPI(provider) as stub:
        r = open_retriever(config(provider, stub, tmp_path / "c.sqlite").retriever)
        try:
            first = r.search(["who wrote hamlet", "capital of france"], 3)
            again = r.search(["Who wrote Hamlet"], 3)
        finally:
            r.close()
    assert [h.doc_id for h in first[0]] == [f"https://example.org/who-wrote-hamlet/{i}" for i in (1, 2, 3)]
    assert first[1][0].title == "Result 1 for capital of france"
    assert again[0] == first[0] and len(stub.requests) == 2  # the repeat came from the cache
    assert r.metrics()["search/cache_hits"] == 1 and r.metrics()["search/requests"] == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_with_retry_after_is_waited_out(provider, tmp_path):
    script = [(429, {"Retry-After": "0.2"}, {"error": "Too many requests"})]
    with StubSearchAPI(provider, script) as stub:
        r = open_retriever(config(provider, stub, tmp_path / "c.sqlite", "retriever.cache.mode=disabled").retriever)
        assert r.search(["q"], 2)[0][0].title == "Result 1 for q"
        assert r.metrics()["search/retries"] == 1 and r.metrics()["search/billed"] == 1
        r.close()
    assert len(stub.requests) == 2


def test_429_that_persists_is_a_quota_error(tmp_path):
    script = [(429, {"Retry-After": "0"}, {"error": "quota"})] * 3
    with StubSearchAPI("serper", script) as stub:
        r = open_retriever(config("serper", stub, tmp_path / "c.sqlite").retriever)
        with pytest.raises(WebSearchQuotaError, match="still after 2 retries"):
            r.search(["q"], 2)
        r.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_auth_failure(provider, tmp_path):
    with StubSearchAPI(provider, [(401, {}, {"error": "Invalid API key."})]) as stub:
        r = open_retriever(config(provider, stub, tmp_path / "c.sqlite").retriever)
        with pytest.raises(WebSearchAuthError, match=rf"{provider} refused the API key in \${KEYS[provider]} \(HTTP 401\)") as e:
            r.search(["q"], 2)
        r.close()
    assert KEY not in str(e.value) and len(stub.requests) == 1


def test_timeout(tmp_path):
    with StubSearchAPI("brave", [2.0, 2.0]) as stub:
        r = open_retriever(config("brave", stub, tmp_path / "c.sqlite", "retriever.web.timeout_s=0.3",
                                  "retriever.web.retries=1").retriever)
        with pytest.raises(RetrieverUnavailableError, match=r"brave: no reply within 0.3 s, after 1 retries"):
            r.search(["q"], 2)
        r.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_json(provider, tmp_path):
    with StubSearchAPI(provider, [(200, {}, '{"organic_results": [')]) as stub:
        r = open_retriever(config(provider, stub, tmp_path / "c.sqlite").retriever)
        with pytest.raises(WebSearchReplyError, match=f"{provider} sent a reply that is not JSON"):
            r.search(["q"], 2)
        r.close()


def test_a_service_with_an_index_is_refused(tmp_path):
    from searchr1.errors import ConfigError

    cfg = load_config(Config, None, ["retriever.method=serper", f"retriever.index={tmp_path}"])
    with pytest.raises(ConfigError, match="retriever.method=serper needs no index or server"):
        open_retriever(cfg.retriever)


def test_serve_fronts_a_web_backend(tmp_path):
    """`searchr1 serve retriever.method=serper`: Search-R1's /retrieve API over web results."""
    from searchr1.retrieval.client import HttpRetriever
    from searchr1.retrieval.process import ServerProcess

    with StubSearchAPI("serper") as stub:
        proc = ServerProcess(["retriever.method=serper", f"retriever.web.serper.url={stub.url}",
                              f"retriever.cache.path={tmp_path / 'c.sqlite'}", "server.port=0"],
                             env={"SERPER_API_KEY": KEY})
        url = proc.start()
        try:
            body = requests.post(url + "/retrieve", json={"queries": ["who wrote hamlet"], "topk": 2,
                                                          "return_scores": True}, timeout=60).json()
            assert [item["document"]["id"] for item in body["result"][0]] == [
                "https://example.org/who-wrote-hamlet/1", "https://example.org/who-wrote-hamlet/2"]
            assert body["result"][0][0]["document"]["contents"] == '"Result 1 for who wrote hamlet"\nSnippet 1 about who wrote hamlet.'
            assert HttpRetriever(url).search(["who wrote hamlet"], 2)[0][1].title == "Result 2 for who wrote hamlet"
            assert requests.get(url + "/health", timeout=30).json()["method"] == "serper"
        finally:
            proc.stop()
    assert len(stub.requests) == 1  # the second search came from the cache
    log = "\n".join(proc.output)
    assert "serving serper retrieval" in log and KEY not in log


def scripted_generator():
    """Searches the question, then answers with the title of the first document it read."""
    from searchr1.rollout.engine import EngineGenerator

    def policy(ctx: str):
        if "<information>Doc 1" in ctx:
            title = re.search(r'Doc 1\(Title: "?([^")]*)"?\)', ctx.rsplit("<information>", 1)[1]).group(1)
            return continue_script(ctx, f"<answer> {title} </answer>")
        question = re.search(r"Question: (.*)\n", ctx).group(1)
        return continue_script(ctx, f"<search> {question} </search>")

    tok = char_tokenizer()
    return EngineGenerator(ScriptedLM(tok, policy), tok)


def test_eval_through_the_cache_replays_offline(tmp_path):
    from searchr1.eval.harness import evaluate

    questions = {"web": [
        {"id": "1", "question": "hamlet author", "golden_answers": ["Result 1 for hamlet author"]},
        {"id": "2", "question": "capital of peru", "golden_answers": ["Lima"]},
    ]}

    def run(out, *extra):
        cfg = config("serper", stub, tmp_path / "cache.sqlite", f"eval.out_dir={out}", "eval.modes=[rag,agent]",
                     "agent.topk=2", "agent.max_turn_tokens=80", "model.chat=raw", "eval.batch_size=2", *extra)
        retriever = open_retriever(cfg.retriever)
        try:
            return evaluate(cfg, None, scripted_generator(), retriever, questions=questions), retriever.metrics()
        finally:
            retriever.close()

    with StubSearchAPI("serper") as stub:
        recorded, rec_metrics = run(tmp_path / "live")
    assert recorded["metrics"]["web"]["agent"]["em"] == 0.5 and recorded["metrics"]["web"]["agent"]["searches"] == 1.0
    # rag searched each question, the agent its own query (the prompt's question, with its "?")
    assert sorted(r["json"]["q"] for r in stub.requests) == ["capital of peru", "capital of peru?", "hamlet author",
                                                             "hamlet author?"]
    assert rec_metrics["search/requests"] == 4 and rec_metrics["search/cost_usd"] == pytest.approx(4 / 1000)
    assert recorded["environment"]["retriever"]["description"] == f"serper over serper at {stub.url} (top-2)"
    # results.json records what the evaluation cost, per dataset x mode and in total
    search = recorded["retriever_metrics"]
    assert [search["runs"]["web"][m]["search/requests"] for m in ("rag", "agent")] == [2.0, 2.0]
    assert search["total"]["search/cost_usd"] == pytest.approx(4 / 1000)
    assert (search["total"]["search/cache_misses"], search["total"]["search/cache_hits"]) == (4.0, 0.0)
    assert json.loads((tmp_path / "live" / "results.json").read_text())["retriever_metrics"] == search
    assert "- search: requests 4, billed 4, " in (tmp_path / "live" / "results.md").read_text()
    # the stub is stopped: nothing answers on its port any more
    with pytest.raises(requests.ConnectionError):
        requests.get(stub.url, timeout=5)
    replayed, rep_metrics = run(tmp_path / "replay", "retriever.cache.mode=replay")
    untimed = {m: {k: v for k, v in values.items() if k not in ("seconds", "qps")}
               for m, values in recorded["metrics"]["web"].items()}
    assert {m: {k: v for k, v in values.items() if k not in ("seconds", "qps")}
            for m, values in replayed["metrics"]["web"].items()} == untimed
    assert (rep_metrics["search/requests"], rep_metrics["search/cache_hits"], rep_metrics["search/cache_misses"]) == (0, 4, 0)
    replayed_search = replayed["retriever_metrics"]["total"]
    assert (replayed_search["search/requests"], replayed_search["search/cost_usd"]) == (0.0, 0.0)
    assert (replayed_search["search/cache_hits"], replayed_search["search/cache_misses"]) == (4.0, 0.0)

    def episodes(out):
        rows = [json.loads(line) for line in (out / "trajectories.web.agent.jsonl").read_text().splitlines()]
        return [(r["id"], r["turns"], r["scores"]) for r in rows]

    assert episodes(tmp_path / "replay") == episodes(tmp_path / "live")
    # a question the recording never searched is a clear error in replay mode
    questions["web"].append({"id": "3", "question": "new question", "golden_answers": ["x"]})
    with pytest.raises(CacheMissError, match="'new question'"):
        run(tmp_path / "replay2", "retriever.cache.mode=replay")
