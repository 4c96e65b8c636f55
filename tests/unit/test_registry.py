"""searchr1.retrieval.registry: method lookup, and hybrid fusing any list of registered methods
(real BM25 plus small stored methods registered here) through `index build` and `open_index`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from searchr1.errors import ConfigError, IndexFormatError
from searchr1.retrieval import registry
from searchr1.retrieval.base import Hit, empty_ranking
from searchr1.retrieval.build import build_index
from searchr1.retrieval.local import open_index
from searchr1.retrieval.settings import IndexConfig, RetrieverConfig

DOCS = ["paris is the capital of france", "berlin lies on the spree", "rome has seven hills", "oslo is cold"]


class OrderRanker:
    """Returns the same passage order, read from its index directory, for every query."""

    def __init__(self, path, name):
        self.order = json.loads(path.read_text())
        self.name = name
        self.num_docs = len(self.order)

    def rank(self, queries, k):
        ids, scores = empty_ranking(len(queries), k)
        n = min(k, len(self.order))
        ids[:, :n] = self.order[:n]
        scores[:, :n] = -np.arange(n)
        return ids, scores


def order_method(name: str, order: list[int]) -> registry.Method:
    """A stored method whose index is a fixed passage order."""

    def build(texts, n, out, settings, progress):
        assert settings is None and len(list(texts)) == n
        out.mkdir(parents=True)
        (out / "order.json").write_text(json.dumps(order))
        return {"num_docs": n}

    def open_(index_dir, cfg):
        return OrderRanker(index_dir / name / "order.json", name)

    return registry.Method(name, open=open_, build=build)


@pytest.fixture
def extra_methods(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    registry.register(order_method("reverse", [3, 2, 1, 0]))
    registry.register(order_method("middle", [1, 2, 0, 3]))


@pytest.fixture
def index(tmp_path, extra_methods):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": t}) + "\n" for i, t in enumerate(DOCS)))
    out = tmp_path / "index"
    meta = build_index(IndexConfig(corpus=str(corpus), dir=str(out), methods=["bm25", "reverse", "middle"]),
                       progress=False)
    assert sorted(meta["methods"]) == ["bm25", "middle", "reverse"]
    return out


def search(index, query, **kw):
    retriever = open_index(RetrieverConfig(index=str(index), device="cpu", rrf_k=60, **kw))
    try:
        hits = retriever.search([query], k=4)[0]
        return retriever.method, [h.doc_id for h in hits], [h.score for h in hits]
    finally:
        retriever.close()


def test_builtin_methods():
    assert registry.names() == ["bm25", "dense", "hybrid"]
    assert registry.names(stored=True) == ["bm25", "dense"]
    assert registry.get("bm25").settings == "bm25" and registry.get("dense").settings == "dense"
    assert not registry.get("hybrid").stored
    assert registry.get("hybrid").needs(RetrieverConfig()) == ["bm25", "dense"]  # the default fusion


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown retrieval method 'sparse'; registered: bm25, dense, hybrid"):
        registry.get("sparse")


def test_register_rejects_taken_and_reserved_names(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    with pytest.raises(ValueError, match="'bm25' is already registered"):
        registry.register(order_method("bm25", [0]))
    with pytest.raises(ValueError, match="'auto'"):
        registry.register(order_method("auto", [0]))
    with pytest.raises(ValueError, match="either be built"):
        registry.register(registry.Method("neither", open=lambda d, c: None))
    registry.register(order_method("new", [0]))
    assert registry.names()[-1] == "new"


def test_hybrid_fuses_only_stored_methods():
    with pytest.raises(ConfigError, match="can only fuse stored methods"):
        registry.get("hybrid").needs(RetrieverConfig(hybrid_methods=["bm25", "hybrid"]))
    with pytest.raises(ConfigError, match="fuses no method"):
        registry.get("hybrid").needs(RetrieverConfig(hybrid_methods=[]))


def test_build_rejects_unknown_and_fused_methods_before_writing(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "contents": "x"}) + "\n")
    for method, message in [("sparse", "registered: bm25, dense, hybrid"), ("hybrid", "fused at query time")]:
        with pytest.raises(ConfigError, match=message):
            build_index(IndexConfig(corpus=str(corpus), dir=str(tmp_path / "i"), methods=[method]), progress=False)
        assert not (tmp_path / "i").exists()


def test_hybrid_of_two_methods(index):
    # "paris" matches passage 0 only, so bm25 ranks [0]; reverse ranks [3, 2, 1, 0].
    method, ids, scores = search(index, "paris", method="hybrid", hybrid_methods=["bm25", "reverse"])
    assert method == "hybrid"
    assert ids == ["d0", "d3", "d2", "d1"]
    np.testing.assert_allclose(scores, [1 / 61 + 1 / 64, 1 / 61, 1 / 62, 1 / 63], rtol=1e-6)


def test_hybrid_of_three_methods(index):
    _, ids, scores = search(index, "paris", method="hybrid", hybrid_methods=["bm25", "reverse", "middle"])
    # d0: 1/61 (bm25) + 1/64 (reverse) + 1/63 (middle); d1: 1/63 + 1/61; d2: 2/62; d3: 1/61 + 1/64
    assert ids == ["d0", "d1", "d2", "d3"]
    np.testing.assert_allclose(scores, [1 / 61 + 1 / 64 + 1 / 63, 1 / 63 + 1 / 61, 2 / 62, 1 / 61 + 1 / 64],
                               rtol=1e-6)


def test_auto_fuses_when_the_index_holds_every_listed_method(index):
    assert search(index, "paris", hybrid_methods=["bm25", "middle"])[0] == "hybrid"
    # the default list names dense, which this index lacks: auto takes the first method it has
    assert search(index, "paris")[0] == "bm25"


def test_hybrid_names_the_missing_index(index):
    with pytest.raises(IndexFormatError, match=r"has no dense index .*index.methods=dense"):
        search(index, "paris", method="hybrid", hybrid_methods=["bm25", "dense", "reverse"])


def test_a_registered_method_is_searched_alone(index):
    method, ids, _ = search(index, "paris", method="middle")
    assert method == "middle" and ids == ["d1", "d2", "d0", "d3"]


# ----------------------------------------------------------------------------- services (no index)


def test_builtin_services():
    assert registry.services() == ["serpapi", "serper", "brave", "tavily", "simulated"]
    assert all(registry.get(s).service and not registry.get(s).stored for s in registry.services())
    assert not any(registry.get(m).service for m in registry.names())
    assert RetrieverConfig(method="tavily").method == "tavily"  # a valid config value


def test_register_checks_what_a_service_takes(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    with pytest.raises(ValueError, match="only one of these"):
        registry.register(registry.Method("both", build=lambda *a: {}, open=lambda d, c: None,
                                          connect=lambda c, cache: None))
    with pytest.raises(ValueError, match="a service does not take it"):
        registry.register(registry.Method("svc", open=lambda d, c: None, connect=lambda c, cache: None))


class Echo:
    method = "echo"

    def __init__(self):
        self.asked = []

    def search(self, queries, k):
        self.asked += list(queries)
        return [[Hit(q, q, q, 1.0)] for q in queries]


@pytest.fixture
def echo_service(monkeypatch):
    """A registered service that records the cache it was connected with."""
    from searchr1.retrieval.cache import CachedRetriever

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    made = {}

    def connect(cfg, cache):
        made["inner"], made["cache"] = Echo(), cache
        return made["inner"] if cache is None else CachedRetriever(made["inner"], cache, "echo")

    registry.register(registry.Method("echo", connect=connect))
    return made


def test_open_retriever_connects_a_service_with_the_cache_on_by_default(echo_service, tmp_path):
    from searchr1.retrieval.local import open_retriever

    cfg = RetrieverConfig()
    cfg.method, cfg.cache.path = "echo", str(tmp_path / "c.sqlite")  # (the Literal was fixed at import)
    r = open_retriever(cfg)
    assert r.search(["a"], 1) == r.search(["A"], 1) and echo_service["inner"].asked == ["a"]
    assert echo_service["cache"].path == tmp_path / "c.sqlite"
    cfg.cache.mode = "disabled"
    assert open_retriever(cfg) is echo_service["inner"]


def test_the_cache_in_front_of_an_index_is_off_unless_asked(index, tmp_path):
    from searchr1.retrieval.cache import CachedRetriever
    from searchr1.retrieval.local import IndexRetriever, open_retriever

    cfg = RetrieverConfig(index=str(index), method="bm25")
    assert isinstance(open_retriever(cfg), IndexRetriever)
    cfg.cache.mode, cfg.cache.path = "enabled", str(tmp_path / "c.sqlite")
    r = open_retriever(cfg)
    assert isinstance(r, CachedRetriever) and r.method == "bm25" and r.num_docs == 4
    assert r.namespace.startswith(f"index:{index.resolve()}:bm25:")
    first = r.search(["paris"], 2)
    assert r.search(["Paris"], 2) == first and r.metrics() == {"search/cache_hits": 1.0, "search/cache_misses": 1.0}
    other = open_retriever(RetrieverConfig(index=str(index), method="hybrid", hybrid_methods=["bm25", "reverse"],
                                           cache=cfg.cache))
    assert other.namespace != r.namespace  # another method or setting is another namespace
    r.close()
    other.close()


def test_with_method_swaps_an_index_for_a_service_and_keeps_it_for_an_index_method():
    from searchr1.retrieval.local import with_method

    cfg = RetrieverConfig(index="idx", method="bm25", topk=5)
    sim = with_method(cfg, "simulated")
    assert (sim.method, sim.index, sim.url, sim.topk, sim.simulated) == ("simulated", "", "", 5, cfg.simulated)
    dense = with_method(RetrieverConfig(url="http://h:1", method="bm25"), "dense")
    assert (dense.method, dense.url) == ("dense", "http://h:1")
    assert cfg.method == "bm25" and cfg.index == "idx"  # a copy
    with pytest.raises(ConfigError, match="unknown retrieval method"):
        with_method(cfg, "nope")
