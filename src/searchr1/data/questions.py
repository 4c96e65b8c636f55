"""Where the questions of a run come from: the one home of training and held-out question sources.

`searchr1 train`, `searchr1 eval`, `searchr1 export verl` and the demo all read their questions
here, so one config gives every command the same rows, `{id, question, golden_answers, data_source}`:

  training_questions(cfg)  train.questions: 'synthetic' (the world's train split, `cfg.world`) or
                           benchmark names / QA files (less the held-out questions when
                           train.questions.exclude_held_out), then the seeded questions.limit sample
                           (seed train.seed)
  held_out_questions(cfg)  label -> rows: the world's held-out split when training on it, else the
                           eval.datasets, each limited by eval.limit / eval.seed
  load_datasets(ev)        label -> (info, rows) of the eval section (a `QuestionSource` with a seed):
                           what `searchr1 eval` reads
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from searchr1.data.benchmarks import is_benchmark, load_benchmark, resolve_split, subset
from searchr1.data.synthetic import Question, World, build_world, make_questions, split_questions
from searchr1.errors import SearchR1Error
from searchr1.rewards import normalize_answer

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


def name_and_split(entry: str, split: str) -> tuple[str, str]:
    """`nq:efficientqa_dev` -> ("nq", "efficientqa_dev"): a benchmark entry may name its own split;
    anything else (a file path, a bare name) keeps `split`."""
    name, sep, own = entry.strip().rpartition(":")
    if sep and own and is_benchmark(name):
        return name, own
    return entry.strip(), split


def load_datasets(ev) -> dict[str, tuple[dict, list[dict]]]:
    """label -> (info, rows) for every dataset of an `EvalConfig` (a `QuestionSource` whose `seed`
    draws the limit's sample); rows are {id, question, golden_answers, data_source}, info is
    {name, split, n}.

    A dataset without questions is kept (with its name as label): `evaluate` refuses it, while an
    export only needs the datasets together to hold some."""
    out: dict[str, tuple[dict, list[dict]]] = {}
    for entry in ev.datasets:
        name, split = name_and_split(entry, ev.split)
        rows = load_benchmark(name, split, source=ev.source, data_dir=ev.data_dir or None, limit=ev.limit,
                              seed=ev.seed)
        label = dataset_label(str(rows[0].get("data_source") or name) if rows else name)
        while label in out:
            label += "_"
        split = resolve_split(name, split) if is_benchmark(name) else "file"
        out[label] = ({"name": name, "split": split, "n": len(rows)}, list(rows))
    return out


# ----------------------------------------------------------------------------- a run's questions


def trains_on_synthetic(tc) -> bool:
    """Whether `TrainConfig` `tc` trains on the synthetic world (train.questions.datasets=synthetic)."""
    return tc.questions.synthetic


def training_questions(cfg) -> list[dict]:
    """The training rows of `cfg.train` (NoQuestionsError when there are none)."""
    tc = cfg.train
    if trains_on_synthetic(tc):
        rows = [as_row(q) for q in synthetic_split(cfg.world)[0]]
    else:
        rows = []
        for entry in tc.questions.datasets:
            name, split = name_and_split(entry, tc.questions.split)
            rows += load_benchmark(name, split, source=tc.questions.source, data_dir=tc.questions.data_dir or None)
        if tc.questions.exclude_held_out:
            rows = without_held_out(rows, held_out_questions(cfg))
    if tc.questions.limit and len(rows) > tc.questions.limit:
        rows = random.Random(tc.seed).sample(rows, tc.questions.limit)
    if not rows:
        raise NoQuestionsError(f"train.questions.datasets {','.join(tc.questions.datasets)!r} gave no questions")
    return rows


def without_held_out(rows: list[dict], held_out: dict[str, list[dict]]) -> list[dict]:
    """`rows` less every question that is also held out, compared after SQuAD normalisation
    (case, punctuation, articles), so a reformatted copy of an evaluated question is caught too."""
    seen = {normalize_answer(r["question"]) for qs in held_out.values() for r in qs}
    return [r for r in rows if normalize_answer(r["question"]) not in seen]


def held_out_questions(cfg) -> dict[str, list[dict]]:
    """label -> rows of the questions a run is validated on: the synthetic world's held-out split
    when it trains on that world (limited as eval.limit / eval.seed limit a QA file), else
    `cfg.eval.datasets` as `load_datasets` reads them."""
    if trains_on_synthetic(cfg.train):
        held_out = [as_row(q) for q in synthetic_split(cfg.world)[1]]
        return {SYNTHETIC_TEST: subset(held_out, cfg.eval.limit, cfg.eval.seed)}
    return {label: rows for label, (_, rows) in load_datasets(cfg.eval).items()}


def sources(cfg) -> dict[str, str]:
    """Where the training ("train") and held-out ("val") questions come from, in words."""
    tc, ev = cfg.train, cfg.eval
    if trains_on_synthetic(tc):
        world = f"synthetic world (seed {cfg.world.seed})"
        return {"train": f"{world}, train split", "val": f"{world}, held-out split"}
    return {"train": f"{','.join(tc.questions.datasets)} ({tc.questions.split})",
            "val": f"{','.join(ev.datasets)} ({ev.split or 'evaluation split'})"}
