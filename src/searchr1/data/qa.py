"""QA datasets as `{"id", "question", "golden_answers": [...]}` records (FlashRAG's shape).

Reads the common file shapes of the benchmarks: JSONL (NQ-open `{question, answer: [...]}`,
FlashRAG `{id, question, golden_answers}`) and JSON lists (HotpotQA / 2Wiki / MuSiQue
`{_id|id, question, answer}`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from searchr1.errors import SearchR1Error

_ANSWER_KEYS = ("golden_answers", "answers", "answer", "possible_answers")


def _answers(row: dict) -> list[str]:
    for key in _ANSWER_KEYS:
        if key in row:
            value = row[key]
            if isinstance(value, str) and key == "possible_answers" and value.startswith("["):
                value = json.loads(value)  # PopQA stores the list as a JSON string
            values = value if isinstance(value, list) else [value]
            return [str(v) for v in values if str(v).strip()]
    raise ValueError(f"no answer field (one of {', '.join(_ANSWER_KEYS)})")


def normalise_record(row: dict, index: int) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise ValueError("expected an object with a 'question' string")
    qid = row.get("id", row.get("_id", index))
    return {"id": str(qid), "question": row["question"].strip(), "golden_answers": _answers(row)}


def read_qa(path: str | os.PathLike, limit: int = 0) -> list[dict]:
    """Read a QA file (.jsonl or .json list) into FlashRAG-shaped records; `limit` > 0 keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise SearchR1Error(f"QA file not found: {path}")
    records: list[dict] = []
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SearchR1Error(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(rows, dict):
            rows = rows.get("data", rows.get("questions"))
        if not isinstance(rows, list):
            raise SearchR1Error(f"{path}: expected a JSON list of questions")
        numbered = enumerate(rows, start=1)
    else:
        numbered = _jsonl_rows(path)
    for lineno, row in numbered:
        try:
            records.append(normalise_record(row, lineno - 1))
        except ValueError as e:
            raise SearchR1Error(f"{path}:{lineno}: {e}") from None
        if limit and len(records) >= limit:
            break
    return records


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise SearchR1Error(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
