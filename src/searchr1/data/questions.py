"""Where the questions of a run come from: the one home of training and held-out question sources.

`searchr1 train`, `searchr1 eval`, `searchr1 export verl` and the demo all read their questions
here, so one config gives every command the same rows, `{id, question, golden_answers, data_source}`:

  training_questions(cfg)  train.train_data: 'synthetic' (the world's train split, `cfg.world`) or
                           benchmark names / QA files, then the seeded train.train_limit sample
  held_out_questions(cfg)  label -> rows: the world's held-out split when training on it, else the
                           eval.datasets, each limited by eval.limit / eval.seed
  load_datasets(ev)        label -> (info, rows) of an EvalConfig: what `searchr1 eval` reads
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from searchr1.data.benchmarks import is_benchmark, load_benchmark, resolve_split, subset
from searchr1.data.synthetic import Question, World, build_world, make_questions, split_questions
from searchr1.errors import SearchR1Error

#: The label of the synthetic world's held-out questions in eval results (the stem of the file
#: `searchr1 train` used to write them to, so result keys stay what they were).
SYNTHETIC_TEST = "synthetic_test"


class NoQuestionsError(SearchR1Error):
    """A question source that gave no questions."""


# ----------------------------------------------------------------------------- the synthetic world


def synthetic_world(world_cfg) -> World:
    """The synthetic world of a `WorldConfig`."""
    w = world_cfg
    return build_world(w.seed, w.countries, w.cities_per_country, w.people, w.organisations)


def synthetic_split(world_cfg) -> tuple[list[Question], list[Question]]:
    """(train, held-out) questions of the synthetic world of a `WorldConfig`."""
    return split_questions(make_questions(synthetic_world(world_cfg)), world_cfg.test_fraction, world_cfg.seed)


def as_row(q: Question) -> dict:
    """A synthetic question as a QA row."""
    return {"id": q.id, "question": q.question, "golden_answers": list(q.golden_answers),
            "data_source": "synthetic"}


# ----------------------------------------------------------------------------- benchmarks and files


def dataset_label(name: str) -> str:
    """A file-name-safe label: a benchmark name as is, a file path by its stem."""
    base = Path(name).stem if (os.sep in name or "/" in name or "." in name) else name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or "dataset"


def load_datasets(ev) -> dict[str, tuple[dict, list[dict]]]:
    """label -> (info, rows) for every dataset of an `EvalConfig`; rows are
    {id, question, golden_answers, data_source}, info is {name, split, n}.

    A dataset without questions is kept (with its name as label): `evaluate` refuses it, while an
    export only needs the datasets together to hold some."""
    out: dict[str, tuple[dict, list[dict]]] = {}
    for name in ev.datasets:
        rows = load_benchmark(name, ev.split, source=ev.source, data_dir=ev.data_dir or None, limit=ev.limit,
                              seed=ev.seed)
        label = dataset_label(str(rows[0].get("data_source") or name) if rows else name)
        while label in out:
            label += "_"
        split = resolve_split(name, ev.split) if is_benchmark(name) else "file"
        out[label] = ({"name": name, "split": split, "n": len(rows)}, list(rows))
    return out


# ----------------------------------------------------------------------------- a run's questions


def _synthetic(tc) -> bool:
    return tc.train_data.strip() == "synthetic"


def _train_names(tc) -> list[str]:
    return [n.strip() for n in tc.train_data.split(",") if n.strip()]


def training_questions(cfg) -> list[dict]:
    """The training rows of `cfg.train` (NoQuestionsError when there are none)."""
    tc = cfg.train
    if _synthetic(tc):
        rows = [as_row(q) for q in synthetic_split(cfg.world)[0]]
    else:
        rows = []
        for name in _train_names(tc):
            rows += load_benchmark(name, tc.train_split, source=tc.data_source, data_dir=tc.data_dir or None)
    if tc.train_limit and len(rows) > tc.train_limit:
        rows = random.Random(tc.seed).sample(rows, tc.train_limit)
    if not rows:
        raise NoQuestionsError(f"train.train_data {tc.train_data!r} gave no questions")
    return rows


def held_out_questions(cfg) -> dict[str, list[dict]]:
    """label -> rows of the questions a run is validated on: the synthetic world's held-out split
    when it trains on that world (limited as eval.limit / eval.seed limit a QA file), else
    `cfg.eval.datasets` as `load_datasets` reads them."""
    if _synthetic(cfg.train):
        held_out = [as_row(q) for q in synthetic_split(cfg.world)[1]]
        return {SYNTHETIC_TEST: subset(held_out, cfg.eval.limit, cfg.eval.seed)}
    return {label: rows for label, (_, rows) in load_datasets(cfg.eval).items()}


def sources(cfg) -> dict[str, str]:
    """Where the training ("train") and held-out ("val") questions come from, in words."""
    tc, ev = cfg.train, cfg.eval
    if _synthetic(tc):
        world = f"synthetic world (seed {cfg.world.seed})"
        return {"train": f"{world}, train split", "val": f"{world}, held-out split"}
    return {"train": f"{','.join(_train_names(tc))} ({tc.train_split})",
            "val": f"{','.join(ev.datasets)} ({ev.split or 'evaluation split'})"}
