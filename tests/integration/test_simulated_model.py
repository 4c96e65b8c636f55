"""Simulated search with a real (tiny, randomly initialised) model on our engine, opened as users
open it (`retriever.method=simulated`): it runs end to end, caches, and replays without loading the model."""

from __future__ import annotations

from searchr1.config import load_config
from searchr1.retrieval.local import open_retriever
from searchr1.settings import Config


def test_simulated_search_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    overrides = ["retriever.method=simulated", f"retriever.simulated.model.name={tiny_model_dir}",
                 "retriever.simulated.model.device=cpu", "retriever.simulated.max_new_tokens=24",
                 f"retriever.cache.path={tmp_path / 'c.sqlite'}"]
    r = open_retriever(load_config(Config, None, overrides).retriever)
    try:
        first = r.search(["who wrote hamlet", "capital of france"], 3)
        again = r.search(["who wrote hamlet"], 3)
        m = r.metrics()
    finally:
        r.close()
    assert len(first) == 2 and all(len(hits) <= 3 for hits in first)
    assert all(h.doc_id.startswith("sim-useful-") for hits in first for h in hits)  # noise 0 at step 0
    assert again[0] == first[0]
    assert r.source == f"documents written by {tiny_model_dir} (prompts v1)"  # what reports name
    assert m["search/generations"] == 2 and m["search/cache_hits"] == 1 and m["search/noise_p"] == 0.0
    from searchr1.rollout.engine import EngineGenerator

    def no_model(*args, **kwargs):
        raise AssertionError("a replay must not load the model")

    monkeypatch.setattr(EngineGenerator, "from_config", no_model)
    replay = open_retriever(load_config(Config, None, [*overrides, "retriever.cache.mode=replay"]).retriever)
    assert replay.search(["capital of france"], 3) == [first[1]]
    replay.close()
