"""The seven Search-R1 benchmarks: where each split lives, locally and on the Hugging Face hub.

Search-R1 trains on NQ + HotpotQA `train` and evaluates on NQ, TriviaQA, PopQA (test), HotpotQA,
2WikiMultiHopQA, MuSiQue (dev) and Bamboogle (test), using FlashRAG's copies
(`RUC-NLPIR/FlashRAG_datasets`, one config per dataset). `load_benchmark` reads a split from a local
data directory (FlashRAG's `{config}/{split}.jsonl` layout or the files the datasets ship natively)
or from the hub, and returns `{"id", "question", "golden_answers", "data_source"}` records.

Note on names: FlashRAG's NQ `test` split is NQ-open's `dev` file (the same 3,610 questions);
Search-R1 calls it "NQ test". EfficientQA's NQ-style sets are local-only splits of `nq`
(`efficientqa_dev`, `efficientqa_test`): usable as training questions offline, never silently
substituted for `train`.
"""

from __future__ import annotations

import difflib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from searchr1.data.qa import QAFormatError, QARecords, SkippedRow, normalise_record, read_qa
from searchr1.errors import MissingDependencyError, SearchR1Error

log = logging.getLogger(__name__)

HUB_ID = "RUC-NLPIR/FlashRAG_datasets"
DATA_DIR_ENV = "SEARCHR1_DATA_DIR"
SOURCES = ("auto", "local", "hub")
#: Split names users write that mean one of ours.
SPLIT_ALIASES = {"validation": "dev", "val": "dev", "eval": "dev", "testing": "test", "training": "train"}


class BenchmarkError(SearchR1Error):
    """An unknown benchmark or split, or a split that is not available from the chosen source."""


class HubUnavailableError(BenchmarkError):
    """The Hugging Face hub could not serve a dataset (offline, unreachable, or missing there)."""


@dataclass(frozen=True)
class Benchmark:
    name: str  # also the records' data_source (Search-R1's names)
    title: str
    hops: Literal["single", "multi"]
    hub_config: str  # config of RUC-NLPIR/FlashRAG_datasets
    hub_splits: tuple[str, ...]
    eval_split: str  # the split Search-R1 reports
    local: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> candidate files, first found wins
    aliases: tuple[str, ...] = ()
    subsample_files: tuple[str, ...] = ()  # local files that hold only part of their split

    @property
    def splits(self) -> tuple[str, ...]:
        order = ["train", "dev", "test"]
        names = set(self.hub_splits) | set(self.local)
        return tuple(sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s)))

    @property
    def multi_hop(self) -> bool:
        return self.hops == "multi"


def _flashrag(config: str, dirs: tuple[str, ...], splits: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """FlashRAG's layout (`{dir}/{split}.jsonl`, also `.json` and `.jsonl.gz`) for each split."""
    return {s: tuple(f"{d}/{s}{ext}" for d in dirs for ext in (".jsonl", ".jsonl.gz", ".json")) for s in splits}


def _merge(*maps: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for m in maps:
        for split, files in m.items():
            out[split] = out.get(split, ()) + tuple(f for f in files if f not in out.get(split, ()))
    return out


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "nq", "Natural Questions (open)", "single", "nq", ("train", "dev", "test"), "test",
            local=_merge(
                _flashrag("nq", ("nq",), ("train", "dev", "test")),
                {
                    "test": ("nq/NQ-open.dev.jsonl", "nq/flashrag_test_subsample1000.jsonl"),
                    "efficientqa_dev": ("nq/NQ-open.efficientqa.dev.1.1.jsonl", "nq/NQ-open.efficientqa.dev.jsonl"),
                    "efficientqa_test": ("nq/NQ-open.efficientqa.test.1.1.jsonl", "nq/NQ-open.efficientqa.test.jsonl"),
                },
            ),
            aliases=("natural_questions", "nq_open", "nq-open"),
            subsample_files=("nq/flashrag_test_subsample1000.jsonl",),
        ),
        Benchmark(
            "triviaqa", "TriviaQA", "single", "triviaqa", ("train", "dev", "test"), "test",
            local=_merge(_flashrag("triviaqa", ("triviaqa",), ("train", "dev", "test")),
                         {"test": ("triviaqa/test_sub1000.jsonl",)}),
            aliases=("trivia_qa", "trivia", "tqa"),
            subsample_files=("triviaqa/test_sub1000.jsonl",),
        ),
        Benchmark(
            "popqa", "PopQA", "single", "popqa", ("test",), "test",
            local=_merge(_flashrag("popqa", ("popqa",), ("test",)),
                         {"test": ("popqa/test_sub1000.jsonl", "popqa/popQA.tsv")}),
            aliases=("pop_qa",),
            subsample_files=("popqa/test_sub1000.jsonl",),
        ),
        Benchmark(
            "hotpotqa", "HotpotQA", "multi", "hotpotqa", ("train", "dev"), "dev",
            local=_merge(
                _flashrag("hotpotqa", ("hotpotqa",), ("train", "dev")),
                {"dev": ("hotpotqa/hotpot_dev_distractor_v1.json", "hotpotqa/hotpot_dev_fullwiki_v1.json"),
                 "train": ("hotpotqa/hotpot_train_v1.1.json",)},
            ),
            aliases=("hotpot", "hotpot_qa"),
        ),
        Benchmark(
            "2wikimultihopqa", "2WikiMultiHopQA", "multi", "2wikimultihopqa", ("train", "dev"), "dev",
            local=_flashrag("2wikimultihopqa", ("2wikimultihopqa", "2wiki"), ("train", "dev")),
            aliases=("2wiki", "2wikimqa", "2wikimultihop", "2wikimultihop_qa", "wikimultihopqa"),
        ),
        Benchmark(
            "musique", "MuSiQue (answerable)", "multi", "musique", ("train", "dev"), "dev",
            local=_merge(
                _flashrag("musique", ("musique",), ("train", "dev")),
                {"dev": ("musique/musique_ans_v1.0_dev.jsonl",), "train": ("musique/musique_ans_v1.0_train.jsonl",)},
            ),
            aliases=("musique_ans",),
        ),
        Benchmark(
            "bamboogle", "Bamboogle", "multi", "bamboogle", ("test",), "test",
            local=_flashrag("bamboogle", ("bamboogle",), ("test",)),
        ),
    ]
}

_ALIASES = {alias: b.name for b in BENCHMARKS.values() for alias in (b.name, *b.aliases)}


# ----------------------------------------------------------------------------- names


def get_benchmark(name: str) -> Benchmark:
    """The registry entry of a benchmark name or alias (case-insensitive); BenchmarkError if unknown."""
    key = name.strip().lower()
    if key in _ALIASES:
        return BENCHMARKS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1)
    hint = f" (did you mean {_ALIASES[close[0]]!r}?)" if close else ""
    raise BenchmarkError(
        f"unknown benchmark {name!r}{hint}: use one of {', '.join(BENCHMARKS)} or the path of a QA file"
    )


def is_benchmark(name: str) -> bool:
    return name.strip().lower() in _ALIASES


def resolve_split(name: str, split: str = "") -> str:
    """The split a request means: '' is the benchmark's evaluation split; 'validation' is 'dev'."""
    bench = get_benchmark(name)
    if not split:
        return bench.eval_split
    split = SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if split not in bench.splits:
        raise BenchmarkError(f"{bench.name} has no split {split!r}; it has {', '.join(bench.splits)}")
    return split


def default_data_dir() -> Path | None:
    """Where benchmark files are looked for when no data_dir is given.

    `$SEARCHR1_DATA_DIR` if set, else `../shared/data` from the current directory if it exists.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    shared = Path.cwd().parent / "shared" / "data"
    return shared if shared.is_dir() else None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise BenchmarkError(f"data_dir {path} is not a directory")
    return path


def local_file(name: str, split: str = "", data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local file that holds `name`/`split` under the data dir, or None."""
    bench = get_benchmark(name)
    split = resolve_split(name, split)
    root = resolve_data_dir(data_dir)
    if root is None:
        return None
    for rel in bench.local.get(split, ()):
        if (root / rel).is_file():
            return root / rel
    return None


# ----------------------------------------------------------------------------- loading


def load_benchmark(
    name: str,
    split: str = "",
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    limit: int = 0,
    seed: int | None = None,
    *,
    on_error: str = "raise",
) -> list[dict]:
    """The questions of one benchmark split: `{"id", "question", "golden_answers", "data_source"}`.

    `name`: a benchmark (nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa / 2wiki, musique,
    bamboogle) or the path of any QA file (then `split` and `source` are ignored and data_source is
    the file's stem). `split` '' means the benchmark's evaluation split.
    `source`: "local" reads `data_dir` (default: `default_data_dir()`), "hub" loads FlashRAG's copy
    with `datasets.load_dataset`, "auto" reads the local file when there is one, else the hub.
    `limit` > 0 keeps N questions: a seeded random subset (deterministic, in file order) when `seed`
    is given, else the first N. `on_error` is `read_qa`'s ("raise" or "skip" malformed rows).
    """
    if source not in SOURCES:
        raise BenchmarkError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if limit < 0:
        raise BenchmarkError(f"limit must be >= 0, got {limit}")
    if on_error not in ("raise", "skip", "error"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not is_benchmark(name):
        path = Path(name).expanduser()
        if path.is_file():
            records = read_qa(path, on_error=on_error)
            return _finish(records, file_label(path), limit, seed)
        if path.suffix or os.sep in name or "/" in name:
            raise SearchR1Error(f"QA file not found: {path}")
        get_benchmark(name)  # raises the unknown-benchmark error with a suggestion
    bench = get_benchmark(name)
    split = resolve_split(name, split)

    if source in ("auto", "local"):
        root = resolve_data_dir(data_dir)
        found = local_file(bench.name, split, root) if root is not None else None
        if found is not None:
            rel = found.relative_to(root).as_posix()
            if rel in bench.subsample_files:
                log.info("%s %s: reading %s, a subsample of the full split", bench.name, split, found)
            records = read_qa(found, on_error=on_error)
            return _finish(records, bench.name, limit, seed)
        if source == "local" or split not in bench.hub_splits:
            raise BenchmarkError(_not_found_message(bench, split, root, source))
        log.info("%s %s: no local file%s; loading from the hub", bench.name, split,
                 f" under {root}" if root is not None else "")
    elif split not in bench.hub_splits:
        raise BenchmarkError(
            f"{bench.name} split {split!r} is not on the hub ({HUB_ID}/{bench.hub_config} has "
            f"{', '.join(bench.hub_splits)}); it is read from a local data_dir only"
        )
    records = _load_hub(bench, split, data_dir, on_error)
    return _finish(records, bench.name, limit, seed)


def file_label(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".jsonl", ".json", ".tsv", ".csv", ".parquet"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or path.stem


def _not_found_message(bench: Benchmark, split: str, root: Path | None, source: str) -> str:
    wanted = ", ".join(bench.local.get(split, ())) or "(no local layout for this split)"
    where = f"under {root}" if root is not None else (
        f"(no data_dir: give data_dir=..., set ${DATA_DIR_ENV}, or keep the files in ../shared/data)"
    )
    msg = f"{bench.name} split {split!r}: no local file {where}; looked for {wanted}"
    if split in bench.hub_splits and source == "local":
        msg += f". Use source='hub' (or 'auto') to load it from {HUB_ID}/{bench.hub_config}"
    return msg


def subset(records: list[dict], limit: int, seed: int | None) -> list[dict]:
    """What `limit` keeps of a question list: all (0 or no fewer than limit), the first `limit`
    (no seed), or a seeded random subset in the list's own order."""
    if not limit or limit >= len(records):
        return list(records)
    if seed is None:
        return list(records[:limit])
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def _finish(records: list[dict], data_source: str, limit: int, seed: int | None) -> list[dict]:
    """The subset, each record tagged with data_source; a file's skipped rows stay in `.skipped`."""
    out = QARecords(subset(records, limit, seed), path=getattr(records, "path", ""),
                    skipped=getattr(records, "skipped", ()))
    for r in out:
        r["data_source"] = data_source
    return out


def _load_hub(bench: Benchmark, split: str, data_dir, on_error: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            f"loading {bench.name} from the Hugging Face hub needs the datasets package: pip install datasets "
            f"(or download {HUB_ID}/{bench.hub_config}/{split}.jsonl and pass data_dir=...)"
        ) from None
    advice = (
        f"download {bench.hub_config}/{split}.jsonl from https://huggingface.co/datasets/{HUB_ID} into "
        f"<data_dir>/{bench.local[split][0].rsplit('/', 1)[0]}/ and pass data_dir=<data_dir> (or set ${DATA_DIR_ENV})"
        if split in bench.local else "pass data_dir=<a directory with the file>"
    )
    try:
        ds = datasets.load_dataset(HUB_ID, bench.hub_config, split=split)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # offline mode, DNS/connection errors, missing repo/config: all mean "not from the hub"
        detail = f"{type(e).__name__}: {e}".strip()
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise HubUnavailableError(
            f"could not load {bench.name} split {split!r} from the Hugging Face hub ({HUB_ID}, config "
            f"{bench.hub_config!r}): {detail}. If this machine has no hub access, {advice}"
        ) from None
    where = f"{HUB_ID}/{bench.hub_config}[{split}]"
    records = QARecords(path=where)
    for i, row in enumerate(ds):
        try:
            records.append(normalise_record(dict(row), i))
        except ValueError as e:
            if on_error == "skip":
                records.skipped.append(SkippedRow(f"row {i}", str(e)))
                continue
            raise QAFormatError(f"{where}, row {i}: {e}") from None
    if records.skipped:
        log.warning("%s: skipped %d malformed row(s)", where, len(records.skipped))
    return records
