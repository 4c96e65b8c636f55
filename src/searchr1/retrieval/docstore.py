"""Random access to passages by integer index, memory-mapped from disk.

Search-R1's server loads the whole corpus into RAM (a `datasets` table plus Python dicts); here a
21M-passage corpus costs only page cache. Layout inside an index directory:

  docs.jsonl         one normalised passage per line: {"id", "title", "text"[, "contents"]}
  docs.offsets.npy   uint64[N + 1], byte offset of each line (and the file's end)

Integer index i is the row number the BM25 and faiss indexes use.
"""

from __future__ import annotations

import json
from array import array
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from searchr1.errors import IndexFormatError
from searchr1.retrieval.corpus import Passage

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"


def _encode(p: Passage) -> bytes:
    row = {"id": p.doc_id, "title": p.title, "text": p.text}
    if p.raw_contents is not None:
        row["contents"] = p.raw_contents
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def _decode(line: bytes) -> Passage:
    row = json.loads(line)
    return Passage(row["id"], row["title"], row["text"], row.get("contents"))


def write_docstore(passages: Iterable[Passage], directory: str | os.PathLike) -> int:
    """Write passages to `directory`; returns how many were written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    offsets = array("Q", [0])  # 8 bytes per passage, not a 36-byte Python int
    pos = 0
    with open(directory / DOCS_FILE, "wb") as f:
        for p in passages:
            data = _encode(p)
            f.write(data)
            pos += len(data)
            offsets.append(pos)
    np.save(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.uint64))
    return len(offsets) - 1


class DocStore:
    """Read-only, thread-safe passage lookup over a memory map."""

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        docs, offs = directory / DOCS_FILE, directory / OFFSETS_FILE
        if not docs.is_file() or not offs.is_file():
            raise IndexFormatError(f"{directory} has no passage store ({DOCS_FILE}, {OFFSETS_FILE})")
        try:
            self._offsets = np.load(offs, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise IndexFormatError(f"{offs} is corrupted: {e}") from None
        size = docs.stat().st_size
        if self._offsets.ndim != 1 or len(self._offsets) < 1 or int(self._offsets[-1]) != size:
            raise IndexFormatError(
                f"{directory}: passage offsets do not match {DOCS_FILE} ({size} bytes); "
                "the index is incomplete or corrupted, rebuild it"
            )
        self._file = open(docs, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Passage:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"passage index {i} out of range for {n} passages")
        i %= n
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return _decode(self._map[start:end])

    def get_many(self, indices: Sequence[int]) -> list[Passage]:
        return [self[int(i)] for i in indices]

    def __iter__(self) -> Iterator[Passage]:
        for i in range(len(self)):
            yield self[i]

    def iter_batches(self, batch_size: int) -> Iterator[list[Passage]]:
        for start in range(0, len(self), batch_size):
            yield self.get_many(range(start, min(start + batch_size, len(self))))

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._file.close()
