"""QA datasets as `{"id", "question", "golden_answers": [...]}` records (FlashRAG's shape).

One reader for the native shapes of the seven Search-R1 benchmarks and for users' own files:

- NQ-open JSONL                    `{question, answer: [...]}` (EfficientQA adds prediction lists:
                                   they are not gold answers and are ignored)
- FlashRAG JSONL                   `{id, question, golden_answers, metadata?}` (NQ, TriviaQA, PopQA,
                                   Bamboogle, and the hub copies of all seven)
- HotpotQA JSON list               `{_id?, question, answer, type, ...}`
- 2WikiMultiHopQA JSON list        `{_id?, question, answer, ...}`
- MuSiQue JSON list / official JSONL `{id, question, answer, answer_aliases?, ...}`
- PopQA original                   `{id?, question, possible_answers: "[\"...\"]"}` (a JSON string)
- TriviaQA original                `{Question, QuestionId, Answer: {Value, Aliases}}`, also wrapped
                                   as `{"Data": [...]}`; Bamboogle original `{Question, Answer}`

Files: `.jsonl`, `.json` (a list, or an object whose `data`/`Data`/`questions` is the list; a
`.json` file that is really JSONL is read as JSONL), `.tsv`/`.csv` (PopQA's release), `.parquet`,
any of them gzipped (`.gz`). Keys are matched case-insensitively.

Answers: the canonical answer comes first, then every alias field (`answer_aliases`, `aliases`,
`possible_answers`, TriviaQA's `Aliases`), stripped, with exact duplicates removed, order kept.

A malformed row raises `QAFormatError` naming the file and line (JSONL/TSV: 1-based line number;
JSON lists: 0-based item index). With `on_error="skip"` such rows are left out, logged as a
warning with their count, and listed in the returned list's `.skipped` attribute.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchr1.errors import SearchR1Error

log = logging.getLogger(__name__)

#: Fields holding the canonical answer(s), first found wins (lowercased keys).
CANONICAL_KEYS = ("golden_answers", "answers", "answer")
#: Fields holding extra accepted answers, merged after the canonical ones (lowercased keys).
ALIAS_KEYS = ("answer_aliases", "aliases", "possible_answers")
#: Fields holding the id (lowercased keys); without one the row's 0-based position is used.
ID_KEYS = ("id", "_id", "qid", "question_id", "questionid")
#: Keys of a JSON object that wraps the list of questions.
WRAPPER_KEYS = ("data", "questions", "examples")

ON_ERROR = ("raise", "skip")


class QAFormatError(SearchR1Error):
    """A QA file, or one of its rows, that cannot be read. The message names the file and line."""


@dataclass(frozen=True)
class SkippedRow:
    """A row left out under `on_error="skip"`: where it is and why."""

    where: str  # "line 12" or "item 3"
    reason: str


class QARecords(list):
    """The records read from a QA file: a plain list, plus what was skipped.

    `skipped` lists the rows left out under `on_error="skip"` (empty otherwise); `path` is the file.
    """

    def __init__(self, records: Iterable[dict] = (), path: str = "", skipped: Iterable[SkippedRow] = ()):
        super().__init__(records)
        self.path = path
        self.skipped: list[SkippedRow] = list(skipped)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


# ----------------------------------------------------------------------------- one row


def _lower_keys(row: dict) -> dict:
    out: dict = {}
    for k, v in row.items():
        out.setdefault(str(k).lower(), v)
    return out


def _as_list(value: Any, key: str) -> list:
    """A field's answers as a list: lists as is, scalars wrapped; an alias field holding a JSON
    list as a string (PopQA's `possible_answers`) is decoded. A canonical answer string is never
    decoded: "[1]" stays the answer "[1]"."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if key in ALIAS_KEYS and text.startswith("["):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"field {key!r} looks like a JSON list but is not valid JSON") from None
            if isinstance(decoded, list):
                return decoded
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (int, float, bool)):  # numpy arrays from parquet
        return list(value.tolist())
    return [value]


def _answer_strings(values: list, key: str) -> list[str]:
    out = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, (dict, list, tuple)):
            raise ValueError(f"field {key!r} holds a {type(v).__name__}, expected strings")
        if isinstance(v, bool):
            text = "yes" if v else "no"
        elif isinstance(v, float) and v.is_integer():
            text = str(int(v))
        else:
            text = str(v)
        text = text.strip()
        if text:
            out.append(text)
    return out


def _dedupe(values: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def answers_of(row: dict) -> list[str]:
    """The gold answers of one native row: canonical first, then aliases, deduplicated in order."""
    lower = _lower_keys(row)
    canonical: list[str] = []
    aliases: list[str] = []
    for key in CANONICAL_KEYS:
        if key not in lower:
            continue
        value = lower[key]
        if isinstance(value, dict):  # TriviaQA {"Value", "Aliases", ...}; SQuAD-style {"text": [...], ...}
            inner = _lower_keys(value)
            sub = "value" if "value" in inner else "text"
            canonical = _answer_strings(_as_list(inner.get(sub), f"{key}.{sub}"), f"{key}.{sub}")
            aliases += _answer_strings(_as_list(inner.get("aliases"), f"{key}.aliases"), f"{key}.aliases")
        else:
            canonical = _answer_strings(_as_list(value, key), key)
        break
    for key in ALIAS_KEYS:
        if key in lower:
            aliases += _answer_strings(_as_list(lower[key], key), key)
    answers = _dedupe(canonical + aliases)
    if not answers:
        if not any(k in lower for k in CANONICAL_KEYS + ALIAS_KEYS):
            raise ValueError(f"no answer field (one of {', '.join(CANONICAL_KEYS + ALIAS_KEYS)})")
        raise ValueError("no non-empty answer")
    return answers


def normalise_record(row: Any, index: int) -> dict:
    """One native row -> `{"id", "question", "golden_answers"}`; ValueError says what is wrong.

    `index` (the row's 0-based position) becomes the id when the row has none.
    """
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    lower = _lower_keys(row)
    question = lower.get("question")
    if not isinstance(question, str):
        raise ValueError("expected an object with a 'question' string")
    question = question.strip()
    if not question:
        raise ValueError("empty question")
    qid = next((lower[k] for k in ID_KEYS if lower.get(k) not in (None, "")), index)
    return {"id": str(qid), "question": question, "golden_answers": answers_of(row)}


# ----------------------------------------------------------------------------- files


def _kind(path: Path) -> tuple[str, bool]:
    """('jsonl' | 'json' | 'tsv' | 'csv' | 'parquet', gzipped) from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    kind = {".json": "json", ".tsv": "tsv", ".csv": "csv", ".parquet": "parquet"}.get(ext, "jsonl")
    return kind, gz


def _open_text(path: Path, gz: bool):
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig", newline="")


def _read_text(path: Path, gz: bool) -> str:
    try:
        with _open_text(path, gz) as f:
            return f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise QAFormatError(f"{path}: cannot read ({e})") from None


Numbered = Iterator[tuple[str, int, Any]]  # (where, 0-based index, row or an Exception)


def _jsonl_rows(path: Path, lines: Iterable[str]) -> Numbered:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as e:
            row = ValueError(f"invalid JSON ({e.msg} at column {e.colno})")
        yield f"line {lineno}", lineno - 1, row


def _json_rows(path: Path, text: str) -> Numbered:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # A `.json` file holding one object per line (JSONL under another name).
            yield from _jsonl_rows(path, text.splitlines())
            return
        raise QAFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict):
        lower = _lower_keys(data)
        if "question" in lower:
            data = [data]
        else:
            wrapped = next((lower[k] for k in WRAPPER_KEYS if isinstance(lower.get(k), list)), None)
            if wrapped is None:
                raise QAFormatError(
                    f"{path}: expected a JSON list of questions (or an object with a "
                    f"{'/'.join(WRAPPER_KEYS)} list), got an object with keys {sorted(data)[:8]}"
                )
            data = wrapped
    if not isinstance(data, list):
        raise QAFormatError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"item {i}", i, row


def _table_rows(path: Path, gz: bool, delimiter: str) -> Numbered:
    with _open_text(path, gz) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            for i, row in enumerate(reader):
                # reader.line_num is the physical line the row ended on (header = line 1).
                yield f"line {reader.line_num}", i, dict(row)
        except csv.Error as e:
            raise QAFormatError(f"{path}, line {reader.line_num}: {e}") from None


def _parquet_rows(path: Path) -> Numbered:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        from searchr1.errors import MissingDependencyError

        raise MissingDependencyError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise QAFormatError(f"{path}: not a readable parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"row {i}", i, row


def iter_rows(path: str | os.PathLike) -> Numbered:
    """The raw rows of a QA file as `(where, index, row)`; `row` is an exception for an unparsable line."""
    path = Path(path)
    kind, gz = _kind(path)
    if kind == "json":
        yield from _json_rows(path, _read_text(path, gz))
    elif kind == "parquet":
        yield from _parquet_rows(path)
    elif kind in ("tsv", "csv"):
        yield from _table_rows(path, gz, "\t" if kind == "tsv" else ",")
    else:
        try:
            with _open_text(path, gz) as f:
                yield from _jsonl_rows(path, f)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise QAFormatError(f"{path}: cannot read ({e})") from None


def read_qa(path: str | os.PathLike, limit: int = 0, *, on_error: str = "raise") -> QARecords:
    """Read a QA file into FlashRAG-shaped records; `limit` > 0 keeps the first N good rows.

    `on_error="raise"` (default): a malformed row raises `QAFormatError` naming file and line.
    `on_error="skip"`: malformed rows are left out, counted in a warning and listed in the result's
    `.skipped`. The result is a list (`QARecords`) of `{"id", "question", "golden_answers"}`.
    """
    if on_error == "error":
        on_error = "raise"
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise SearchR1Error(f"QA file not found: {path}")
    records = QARecords(path=str(path))
    for where, index, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            record = normalise_record(row, index)
        except ValueError as e:
            if on_error == "raise":
                raise QAFormatError(f"{path}, {where}{' (0-based)' if where.startswith('item') else ''}: {e}") from None
            records.skipped.append(SkippedRow(where, str(e)))
            continue
        records.append(record)
        if limit and len(records) >= limit:
            break
    if records.skipped:
        first = "; ".join(f"{s.where}: {s.reason}" for s in records.skipped[:3])
        log.warning("%s: skipped %d malformed row(s) (%s%s)", path, len(records.skipped), first,
                    "; ..." if len(records.skipped) > 3 else "")
    return records
