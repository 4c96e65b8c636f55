"""Corpus files: JSONL, one passage per line, read as a stream.

Two row shapes are accepted (FlashRAG / Search-R1 conventions):
  {"id": ..., "contents": "\"Title\"\ntext"}     and     {"id": ..., "title": ..., "text": ...}
Other keys are ignored. Files ending in .gz are decompressed on the fly. Nothing here holds more
than one line in memory, so a 21M-passage corpus streams through in constant memory.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from searchr1.errors import CorpusFormatError


@dataclass(frozen=True)
class Passage:
    doc_id: str
    title: str
    text: str
    # Kept only when the source `contents` is not exactly format_contents(title, text), so that
    # the server can hand every passage back byte for byte as it was given.
    raw_contents: str | None = None

    @property
    def contents(self) -> str:
        return self.raw_contents if self.raw_contents is not None else format_contents(self.title, self.text)


def format_contents(title: str, text: str) -> str:
    """The Search-R1 `contents` string: the title in double quotes, a newline, the text."""
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """Inverse of `format_contents`: first line (quotes stripped) is the title, the rest is text.

    A single-line `contents` has no title.
    """
    head, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents
    return head.strip().strip('"'), rest


def parse_row(row: object) -> Passage:
    """One decoded JSON row -> Passage. Raises ValueError with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    doc_id = row.get("id", row.get("_id"))
    if doc_id is None or isinstance(doc_id, (bool, dict, list)):
        raise ValueError("missing or invalid 'id'")
    title, text = row.get("title"), row.get("text")
    if isinstance(text, str):
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise ValueError("'title' must be a string")
        return Passage(str(doc_id), title, text)
    contents = row.get("contents")
    if isinstance(contents, str):
        title, text = split_contents(contents)
        raw = None if format_contents(title, text) == contents else contents
        return Passage(str(doc_id), title, text, raw)
    raise ValueError("need 'contents' (string) or 'text' (string, with optional 'title')")


def open_text(path: str | os.PathLike, mode: str = "rt") -> IO:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


@dataclass
class BadLine:
    lineno: int
    reason: str
    raw: str


def iter_passages(
    path: str | os.PathLike,
    on_bad_line: str = "error",
    bad_lines: list[BadLine] | None = None,
    progress: bool = False,
) -> Iterator[Passage]:
    """Stream passages from a JSONL corpus.

    on_bad_line="error" raises CorpusFormatError naming the file and line; "skip" appends the
    line to `bad_lines` (if given) and goes on. Blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(f"corpus file not found: {path}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}")
    try:
        with open(path, "rb") as raw_file:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw_file) if path.suffix == ".gz" else raw_file
            last_pos = 0
            for lineno, raw in enumerate(stream, start=1):
                if bar is not None and lineno % 4096 == 0:
                    pos = raw_file.tell()
                    bar.update(pos - last_pos)
                    last_pos = pos
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                    passage = parse_row(json.loads(line))
                except (UnicodeDecodeError, ValueError) as e:
                    reason = "not valid UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
                    if isinstance(e, json.JSONDecodeError):
                        reason = f"invalid JSON ({e.msg} at column {e.colno})"
                    if on_bad_line == "error":
                        raise CorpusFormatError(
                            f"{path}:{lineno}: {reason}. Fix the line, or pass index.on_bad_line=skip "
                            "to skip malformed lines (they are saved beside the index)."
                        ) from None
                    if bad_lines is not None:
                        bad_lines.append(BadLine(lineno, reason, raw.decode("utf-8", "replace").rstrip("\n")))
                    continue
                yield passage
            if bar is not None:
                bar.update(raw_file.tell() - last_pos)
                bar.close()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorpusFormatError(f"{path}: not a valid gzip file ({e}); is it truncated?") from None


def write_passages(passages: Iterable[Passage], path: str | os.PathLike, shape: str = "contents") -> int:
    """Write passages as JSONL in the `contents` shape (default) or the `title`/`text` shape."""
    n = 0
    with open_text(path, "wt") as f:
        for p in passages:
            if shape == "contents":
                row = {"id": p.doc_id, "contents": p.contents}
            else:
                row = {"id": p.doc_id, "title": p.title, "text": p.text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Cheap identity of a corpus file (size and mtime) to detect a changed corpus."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


__all__ = [
    "BadLine",
    "Passage",
    "file_fingerprint",
    "format_contents",
    "iter_passages",
    "open_text",
    "parse_row",
    "split_contents",
    "write_passages",
]
