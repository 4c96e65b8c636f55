"""Atomic file writes: a reader (or a killed writer) never sees half a file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def swap_in(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Replace `final` (a file or a directory; it may not exist) by `tmp` with renames only: the old
    one is renamed aside first (os.replace cannot replace a non-empty directory), then removed."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def write_parquet_atomic(table, path: str | os.PathLike) -> None:
    """Write a pyarrow `table` as parquet to a temporary sibling, then rename it over `path`;
    an OSError becomes a `SearchR1Error` naming the file."""
    import pyarrow.parquet as pq

    from searchr1.errors import SearchR1Error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise SearchR1Error(f"cannot write {path}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
