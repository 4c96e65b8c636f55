"""`searchr1 data prepare`: QA sets -> parquet files of prompts, one per dataset and split.

Each file `{out_dir}/{name}.{split}.parquet` has the columns

    id, data_source, split, question, golden_answers (list<string>), prompt

where `prompt` is `searchr1.protocol.build_prompt(question, tokenizer, template)`: the question in
the Search-R1 instruction (rendered with the tokenizer's chat template when one is given and has
one). The template text and where the questions came from are stored in the file's schema metadata
(`searchr1.template`, `searchr1.source`). Every dataset is read and every prompt built before anything
is written; each file is written to a temporary name and renamed, so a failure leaves no half file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from searchr1.atomic import write_parquet_atomic
from searchr1.data.benchmarks import (
    BenchmarkError,
    HUB_ID,
    file_label,
    get_benchmark,
    is_benchmark,
    load_benchmark,
    local_file,
    resolve_split,
)
from searchr1.errors import ConfigError, MissingDependencyError, SearchR1Error

log = logging.getLogger(__name__)

COLUMNS = ("id", "data_source", "split", "question", "golden_answers", "prompt")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("writing and reading prepared data needs pyarrow: pip install pyarrow") from None
    return pa, pq


def _schema(pa, metadata: dict[str, str] | None = None):
    return pa.schema(
        [
            ("id", pa.string()),
            ("data_source", pa.string()),
            ("split", pa.string()),
            ("question", pa.string()),
            ("golden_answers", pa.list_(pa.string())),
            ("prompt", pa.string()),
        ],
        metadata=metadata,
    )


def _label(name: str) -> str:
    if is_benchmark(name):
        return get_benchmark(name).name
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", file_label(Path(name))).strip("_")
    return label or "dataset"


def _source_of(name: str, split: str, source: str, data_dir) -> str:
    """Where load_benchmark reads `name`/`split` from (for the summary and the file metadata)."""
    if not is_benchmark(name):
        return str(Path(name).expanduser())
    bench = get_benchmark(name)
    if source != "hub":
        try:
            found = local_file(bench.name, split, data_dir)
        except SearchR1Error:
            found = None
        if found is not None:
            return str(found)
    return f"hub:{HUB_ID}/{bench.hub_config}[{split}]"


def prepare(
    datasets: list[str],
    split: str,
    out_dir: str | os.PathLike,
    template: str = "search-r1",
    data_dir: str | os.PathLike | None = None,
    limit: int = 0,
    seed: int | None = 0,
    tokenizer: Any = None,
    source: str = "auto",
) -> dict:
    """Write `{out_dir}/{name}.{split}.parquet` for every dataset; return a summary.

    `datasets`: benchmark names (see `searchr1.data.benchmarks.BENCHMARKS`) or QA file paths.
    `split`: the split of every benchmark; '' = each benchmark's evaluation split (a file path's
    rows are labelled `split or "test"`). `limit`/`seed`/`source`/`data_dir`: as in
    `load_benchmark` (with a seed, `limit` draws a seeded random subset).

    Returns `{"out_dir", "template", "total_rows", "files": {name: {"path", "rows", "split", "source"}}}`.
    """
    from searchr1.protocol import build_prompt, get_template

    if not datasets:
        raise ConfigError("prepare: name at least one dataset")
    try:
        template_text = get_template(template)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data_dir = None if data_dir in (None, "") else data_dir
    pa, _ = _pyarrow()

    jobs: list[tuple[str, str, str, str, list[dict]]] = []  # (label, split, source, path name, rows)
    seen: dict[str, str] = {}
    for name in datasets:
        label = _label(name)
        this_split = resolve_split(name, split) if is_benchmark(name) else (split or "test")
        filename = f"{label}.{this_split}.parquet"
        if filename in seen:
            raise BenchmarkError(f"datasets {seen[filename]!r} and {name!r} would both write {filename}")
        seen[filename] = name
        rows = load_benchmark(name, this_split, source=source, data_dir=data_dir, limit=limit, seed=seed)
        if not rows:
            raise BenchmarkError(f"dataset {name!r} split {this_split!r} has no questions")
        jobs.append((label, this_split, _source_of(name, this_split, source, data_dir), filename, rows))

    tables = []
    for label, this_split, src, filename, rows in jobs:
        columns: dict[str, list] = {c: [] for c in COLUMNS}
        for r in rows:
            columns["id"].append(str(r["id"]))
            columns["data_source"].append(str(r.get("data_source", label)))
            columns["split"].append(this_split)
            columns["question"].append(r["question"])
            columns["golden_answers"].append(list(r["golden_answers"]))
            columns["prompt"].append(build_prompt(r["question"], tokenizer=tokenizer, template=template_text))
        meta = {"searchr1.template": template_text, "searchr1.source": src,
                "searchr1.columns": json.dumps(list(COLUMNS))}
        tables.append((label, this_split, src, filename, pa.table(columns, schema=_schema(pa, meta))))

    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchR1Error(f"cannot create out_dir {out}: {e}") from None
    files: dict[str, dict] = {}
    for label, this_split, src, filename, table in tables:
        path = out / filename
        write_parquet_atomic(table, path)
        files[label] = {"path": str(path), "rows": table.num_rows, "split": this_split, "source": src}
        log.info("wrote %s (%d rows from %s)", path, table.num_rows, src)
    return {
        "out_dir": str(out),
        "template": template,
        "total_rows": sum(f["rows"] for f in files.values()),
        "files": files,
    }


def prepare_from_config(cfg, template: str = "search-r1", tokenizer: Any = None) -> dict:
    """`prepare` with the fields of a `searchr1.data.settings.DataConfig`, prompts in `template`
    (the root config's agent.template)."""
    return prepare(
        list(cfg.datasets), cfg.split, cfg.out_dir, template=template, data_dir=cfg.data_dir or None,
        limit=cfg.limit, seed=cfg.seed, tokenizer=tokenizer, source=cfg.source,
    )


def read_prepared(path: str | os.PathLike) -> list[dict]:
    """The rows of a prepared parquet file, as dicts with the `COLUMNS` keys."""
    path = Path(path)
    if not path.is_file():
        raise SearchR1Error(f"prepared data file not found: {path}")
    _, pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise SearchR1Error(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise SearchR1Error(f"{path}: not a prepared data file (missing columns {', '.join(missing)})")
    return table.select(list(COLUMNS)).to_pylist()


def prepared_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `searchr1.*` schema metadata of a prepared file (template text, source)."""
    _, pq = _pyarrow()
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"searchr1.")}
