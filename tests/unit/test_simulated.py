"""searchr1.retrieval.simulated: the noise curriculum, the document format, and the simulated engine
driven by a scripted generator (every document known in advance)."""

from __future__ import annotations

import random

import pytest

from fakes import ReplyGenerator, char_tokenizer
from searchr1.retrieval.cache import CacheMissError, QueryCache
from searchr1.retrieval.settings import SimulatedConfig
from searchr1.retrieval.simulated import PROMPTS, SimulatedSearch, noise_probability, open_simulated_search, parse_documents


def test_noise_probability_follows_zerosearch_curriculum():
    # p_i = p_s + (b^(i/m) - 1)/(b - 1) * (p_e - p_s), b = 4
    assert noise_probability(0, 100, 0.0, 0.5, 4.0) == 0.0
    assert noise_probability(50, 100, 0.0, 0.5, 4.0) == pytest.approx(0.5 * (2 - 1) / 3)
    assert noise_probability(100, 100, 0.0, 0.5, 4.0) == pytest.approx(0.5)
    assert noise_probability(250, 100, 0.1, 0.5, 4.0) == pytest.approx(0.5)  # past the end: p_e
    assert noise_probability(30, 0, 0.2, 0.9, 4.0) == 0.2  # no step count known: p_s
    # convex: noise rises slowly first
    assert noise_probability(25, 100, 0, 1, 4) < 0.25 and noise_probability(75, 100, 0, 1, 4) < 0.75


def test_parse_documents():
    text = ("Here are the results.\nDocument 1\nTitle: Hamlet\nText: Hamlet is a play\nby Shakespeare.\n\n"
            "**Document 2:**\nTitle: Globe\nText: A theatre.\nDocument 3\nTitle: Extra\nText: cut by k")
    assert parse_documents(text, 2) == [("Hamlet", "Hamlet is a play by Shakespeare."), ("Globe", "A theatre.")]
    assert parse_documents("just some prose", 3) == [("", "just some prose")]  # format ignored: one document
    assert parse_documents("Document 1\nTitle: Only a title", 3) == [("Only a title", "")]
    assert parse_documents("   ", 3) == []


def reply(prompt: str) -> str:
    query = prompt.rsplit("Query: ", 1)[1].strip()
    kind = "noisy" if "does not help" in prompt else "useful"
    return "".join(f"Document {i}\nTitle: {kind} {i}\nText: {kind} passage {i} on {query}\n" for i in (1, 2, 3))


def engine(tmp_path=None, replay=False, **cfg):
    gen = ReplyGenerator(char_tokenizer(), reply)
    cache = QueryCache(tmp_path / "c.sqlite", replay=replay) if tmp_path is not None else None
    return gen, SimulatedSearch(lambda: gen, SimulatedConfig(**cfg), "scripted", cache, chat=False)


def test_useful_documents_at_the_start_of_training():
    gen, sim = engine()
    hits = sim.search(["who wrote hamlet"], 2)[0]
    assert [(h.title, h.text, h.score) for h in hits] == [("useful 1", "useful passage 1 on who wrote hamlet", 1.0),
                                                          ("useful 2", "useful passage 2 on who wrote hamlet", 0.5)]
    assert hits[0].doc_id.startswith("sim-useful-") and hits[0].doc_id.endswith("-0")
    assert gen.prompts == [PROMPTS["useful"].format(k=2, query="who wrote hamlet")]


def test_noisy_draws_follow_the_schedule_and_the_seed():
    gen, sim = engine(seed=7, noise_start=0.0, noise_end=0.8)
    sim.set_step(60, total_steps=100)
    p = noise_probability(60, 100, 0.0, 0.8, 4.0)
    queries = [f"q{i}" for i in range(40)]
    rng = random.Random(7)
    expected = ["noisy" if rng.random() < p else "useful" for _ in queries]
    out = sim.search(queries, 1)
    assert [hits[0].title.split()[0] for hits in out] == expected
    assert 0 < expected.count("noisy") < 40
    m = sim.metrics()
    assert m["search/noisy_queries"] == expected.count("noisy") and m["search/simulated_queries"] == 40
    assert m["search/noise_p"] == pytest.approx(p) and m["search/generations"] == 40


def test_settings_fix_the_step_count_over_the_trainers():
    _, sim = engine(noise_steps=10, noise_end=1.0)
    sim.set_step(5, total_steps=1000)
    assert sim.noise_probability() == pytest.approx(noise_probability(5, 10, 0.0, 1.0, 4.0))


def test_each_kind_is_cached_and_a_replay_loads_no_model(tmp_path):
    gen, sim = engine(tmp_path, noise_start=0.5, noise_end=0.5, seed=3)
    first = sim.search(["a", "b", "c", "d"], 2)
    assert len(gen.prompts) == 4
    sim.close()
    loads = []
    replay = SimulatedSearch(lambda: loads.append(1), SimulatedConfig(noise_start=0.5, noise_end=0.5, seed=3),
                             "scripted", QueryCache(tmp_path / "c.sqlite", replay=True), chat=False)
    assert replay.search(["a", "b", "c", "d"], 2) == first  # same seed, same draws, documents from the cache
    assert loads == []
    m = replay.metrics()
    assert (m["search/cache_hits"], m["search/cache_misses"], m["search/generations"]) == (4, 0, 0)
    with pytest.raises(CacheMissError):
        replay.search(["e"], 2)


def test_open_simulated_search_with_a_given_generator_keeps_it_open():
    gen = ReplyGenerator(char_tokenizer(), reply)
    sim = open_simulated_search(SimulatedConfig(), None, generator=gen)
    assert sim.model_id == "ReplyGenerator" and sim.search(["x"], 1)[0][0].title == "useful 1"
    sim.close()
    assert not gen.closed


def test_bad_schedule_settings_are_refused():
    with pytest.raises(ValueError, match="noise_base > 1"):
        SimulatedConfig(noise_base=1.0)
    with pytest.raises(ValueError, match="probabilities"):
        SimulatedConfig(noise_end=1.5)
