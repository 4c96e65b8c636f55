"""The synthetic world written to disk: corpus and question files, rewritten only when they change."""

from __future__ import annotations

import json

from searchr1.config import load_config
from searchr1.data.questions import synthetic_split, synthetic_world
from searchr1.data.world import prepare_world
from searchr1.retrieval.corpus import iter_passages
from searchr1.settings import Config


def _world(*overrides):
    return load_config(Config, None, ["world.people=20", "world.organisations=6", "world.countries=3",
                                      *overrides]).world


def test_the_world_is_written_once_and_left_alone_when_unchanged(tmp_path):
    world = _world()
    corpus, train, test = prepare_world(world, tmp_path / "data")
    assert corpus == tmp_path / "data" / "corpus.jsonl"
    assert (train, test) == synthetic_split(world)
    assert list(iter_passages(corpus)) == list(synthetic_world(world).passages())
    for name, qs in (("train", train), ("test", test)):
        rows = [json.loads(line) for line in (tmp_path / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert rows == [q.to_dict() for q in qs]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()}

    prepare_world(world, tmp_path / "data")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()} == stamps  # no temp file left

    prepare_world(_world("world.seed=1"), tmp_path / "data")
    assert (tmp_path / "data" / "corpus.jsonl").stat().st_mtime_ns != stamps["corpus.jsonl"]
