"""`searchr1 index build`: corpus -> index directory.

Layout of an index directory:
  index.json           what is inside: corpus fingerprint, passage count, methods with their stats
  docs.jsonl, docs.offsets.npy    the passage store (see docstore.py)
  <method>/            one directory per stored method of the registry (registry.py):
                       bm25/ a bm25s index (bm25.py), dense/ a faiss index + encoder settings (dense.py)
  skipped_lines.jsonl  malformed corpus lines, when index.on_bad_line=skip

Every write is atomic: a fresh index is built in a temporary sibling directory and renamed into
place; a method added to an existing index is built in a temporary subdirectory and renamed. An
interrupted build leaves either the old index or none, never a half-written one that loads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from searchr1 import __version__
from searchr1.atomic import swap_in, write_text_atomic
from searchr1.errors import ConfigError, CorpusFormatError, IndexFormatError
from searchr1.retrieval import registry
from searchr1.retrieval.corpus import BadLine, file_fingerprint, iter_passages
from searchr1.retrieval.docstore import DocStore, write_docstore
from searchr1.retrieval.settings import IndexConfig

META_FILE = "index.json"
FORMAT = "searchr1-index"
FORMAT_VERSION = 1


def read_index_meta(index_dir: str | os.PathLike) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / META_FILE
    if not path.is_file():
        hint = "" if index_dir.exists() else " (the directory does not exist)"
        raise IndexFormatError(f"{index_dir} is not a searchr1 index: no {META_FILE}{hint}. "
                               "Build one with `searchr1 index build`.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path} is corrupted: {e}") from None
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: unsupported index format {meta.get('format')!r} v{meta.get('version')}")
    return meta


def _write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def _stored_method(name: str) -> registry.Method:
    method = registry.get(name)
    if not method.stored:
        raise ConfigError(f"{name} is fused at query time, not built; index.methods takes "
                          f"{', '.join(registry.names(stored=True))}")
    return method


def _build_method(method: registry.Method, store: DocStore, out: Path, cfg: IndexConfig, progress: bool) -> dict:
    settings = getattr(cfg, method.settings) if method.settings else None
    start = time.perf_counter()
    stats = method.build((p.contents for p in store), len(store), out, settings, progress)
    stats["build_seconds"] = round(time.perf_counter() - start, 3)
    return stats


def build_index(cfg: IndexConfig, progress: bool = True) -> dict:
    """Build (or extend) the index directory `cfg.dir` from `cfg.corpus`. Returns index.json."""
    if not cfg.corpus:
        raise CorpusFormatError("no corpus given: set index.corpus=PATH (a JSONL file)")
    corpus = Path(cfg.corpus)
    if not corpus.is_file():
        raise CorpusFormatError(f"corpus file not found: {corpus}")
    methods = [_stored_method(m) for m in cfg.methods]  # an unknown method fails before anything is written
    out = Path(cfg.dir)
    fingerprint = file_fingerprint(corpus)
    meta = read_index_meta(out) if (out / META_FILE).exists() else None

    if meta is not None and meta["corpus"] != fingerprint and not cfg.overwrite:
        raise IndexFormatError(
            f"{out} holds an index of another corpus ({meta['corpus']['path']}, or the file changed "
            "since). Pass index.overwrite=true to replace it, or choose another index.dir."
        )
    if meta is None and out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise IndexFormatError(f"{out} exists and is not a searchr1 index; refusing to write into it "
                               "(pass index.overwrite=true to replace it)")

    if meta is None or meta["corpus"] != fingerprint:
        # Fresh build in a sibling directory, renamed into place at the end.
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            meta = _build_fresh(corpus, fingerprint, tmp, methods, cfg, progress)
            out.parent.mkdir(parents=True, exist_ok=True)
            swap_in(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta

    # Same corpus: reuse the passage store, add the methods that are missing (or rebuild them).
    store = DocStore(out)
    try:
        for method in methods:
            name = method.name
            if name in meta["methods"] and (out / name).is_dir() and not cfg.overwrite:
                continue
            tmp = out / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                stats = _build_method(method, store, tmp, cfg, progress)
                swap_in(tmp, out / name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            meta["methods"][name] = stats
            _write_json_atomic(out / META_FILE, meta)
    finally:
        store.close()
    return meta


def _build_fresh(corpus: Path, fingerprint: dict, out: Path, methods: list[registry.Method], cfg: IndexConfig,
                 progress: bool) -> dict:
    out.mkdir(parents=True)
    bad: list[BadLine] = []
    start = time.perf_counter()
    n = write_docstore(iter_passages(corpus, cfg.on_bad_line, bad, progress=progress), out)
    if n == 0:
        raise CorpusFormatError(f"{corpus} contains no passages")
    if bad:
        with open(out / "skipped_lines.jsonl", "w", encoding="utf-8") as f:
            for b in bad:
                f.write(json.dumps({"line": b.lineno, "reason": b.reason, "raw": b.raw}, ensure_ascii=False) + "\n")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "searchr1_version": __version__,
        "corpus": fingerprint,
        "num_docs": n,
        "skipped_lines": len(bad),
        "docstore_seconds": round(time.perf_counter() - start, 3),
        "methods": {},
    }
    store = DocStore(out)
    try:
        for method in methods:
            meta["methods"][method.name] = _build_method(method, store, out / method.name, cfg, progress)
    finally:
        store.close()
    _write_json_atomic(out / META_FILE, meta)
    return meta
