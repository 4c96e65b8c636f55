"""Search engine benchmark: build, load, serving throughput/latency, and answer recall.

    python benchmarks/retrieval.py                          # wiki18_mini + synthetic 1M passages
    python benchmarks/retrieval.py --synthetic-docs 0       # wiki18_mini only
    python benchmarks/retrieval.py --no-wiki                # synthetic 1M only
    python benchmarks/retrieval.py --sections serve --repeats 5

Corpora:
  wiki18_mini   ../shared/data/corpus/wiki18_mini.jsonl (23,336 real passages), MiniLM embeddings
  synthetic     N generated passages (Zipfian vocabulary, ~80 words); its dense vectors are RANDOM
                unit vectors, not encodings (encoding 1M passages on CPU takes hours): timings of
                search and serving are real, its retrieval quality is meaningless and not reported.

Retrievers: bm25, dense-flat, dense-hnsw, hybrid (RRF of bm25 + dense-flat).
Serving: `searchr1 serve` in its own process; the load generator (httpx, asyncio) in this one.
  (a) batch: one client sending requests of 32 queries;
  (b) 32 concurrent clients sending one query each (rollout workers).
  baseline: the same retriever served with server.batching=false: every request searched on its
  own in a thread pool, as Search-R1's retrieval server does.
Each figure is the median of --repeats runs; "x baseline" divides by the baseline of the same run.
Builds are cached in benchmarks/.cache (delete it, or pass --rebuild, to measure builds again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CACHE, SHARED_DATA, dir_size_mib, machine, median_run, run_load, run_measured, save_json, table, vm_hwm_mib  # noqa: E402

PY = sys.executable
KS = (1, 3, 10)


# ----------------------------------------------------------------------------- building


def cli_build(corpus: Path, out: Path, methods: str, extra: list[str] = ()) -> dict:
    seconds, rss, _ = run_measured([PY, "-m", "searchr1", "index", "build", "-q", f"index.corpus={corpus}",
                                    f"index.dir={out}", f"index.methods={methods}", *extra])
    return {"seconds": seconds, "peak_rss_mib": rss}


def child_variant(src: str, dst: str, index_type: str, random_dim: str = "0") -> None:
    """(child process) Build `dst` = passages of `src` + a dense index of type `index_type`.

    The embeddings come from src/dense (saved at build time) or, with random_dim > 0, are random
    unit vectors written to src/dense first (synthetic corpus).
    """
    from searchr1.retrieval.build import META_FILE, read_index_meta
    from searchr1.retrieval.dense import EMBEDDINGS_FILE, ENCODER_FILE, build_dense_from_embeddings
    from searchr1.retrieval.settings import DenseConfig, EncoderConfig

    src_p, dst_p = Path(src), Path(dst)
    meta = read_index_meta(src_p)
    enc = EncoderConfig()
    if int(random_dim):
        emb_path = dst_p / "dense" / EMBEDDINGS_FILE
        emb_path.parent.mkdir(parents=True, exist_ok=True)
        emb = np.lib.format.open_memmap(emb_path, "w+", np.float16, (meta["num_docs"], int(random_dim)))
        rng = np.random.default_rng(0)
        for s in range(0, len(emb), 100_000):
            x = rng.standard_normal((min(100_000, len(emb) - s), emb.shape[1]), dtype=np.float32)
            emb[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        emb.flush()
    else:
        emb_path = src_p / "dense" / EMBEDDINGS_FILE
        enc = EncoderConfig(**json.loads((src_p / "dense" / ENCODER_FILE).read_text()))
    embeddings = np.load(emb_path, mmap_mode="r")
    dst_p.mkdir(parents=True, exist_ok=True)
    for name in ("docs.jsonl", "docs.offsets.npy"):
        if not (dst_p / name).exists():
            os.link(src_p / name, dst_p / name)
    cfg = DenseConfig(encoder=enc, index_type=index_type, save_embeddings=False)
    start = time.perf_counter()
    stats = build_dense_from_embeddings(embeddings, dst_p / "dense", cfg)
    stats["build_seconds"] = time.perf_counter() - start
    meta["methods"] = {"dense": stats}
    (dst_p / META_FILE).write_text(json.dumps(meta, indent=2))


def variant(src: Path, dst: Path, index_type: str, random_dim: int = 0) -> dict:
    shutil.rmtree(dst / "dense" if dst == src else dst, ignore_errors=True)
    seconds, rss, _ = run_measured([PY, __file__, "_variant", str(src), str(dst), index_type, str(random_dim)])
    return {"seconds": seconds, "peak_rss_mib": rss}


def child_load(index: str, method: str) -> None:
    """(child process) Open a retriever and answer one query; print the time it took."""
    start = time.perf_counter()
    from searchr1.retrieval.local import open_index
    from searchr1.retrieval.settings import RetrieverConfig

    imported = time.perf_counter()
    r = open_index(RetrieverConfig(index=index, method=method))
    opened = time.perf_counter()
    r.search(["warm up query"], 3)
    print(json.dumps({"import_s": imported - start, "open_s": opened - imported,
                      "first_query_s": time.perf_counter() - opened}))


def build_corpus(name: str, corpus: Path, rebuild: bool, random_dim: int = 0) -> dict[str, tuple[Path, str]]:
    """Build (or reuse) the index directories of one corpus; return {retriever: (dir, method)}."""
    main, hnsw = CACHE / name, CACHE / f"{name}-hnsw"
    stats_path = CACHE / f"{name}.build.json"
    if rebuild or not stats_path.exists() or not (hnsw / "index.json").exists():
        shutil.rmtree(main, ignore_errors=True)
        stats = {"bm25": cli_build(corpus, main, "bm25")}
        if random_dim:
            stats["dense-flat"] = variant(main, main, "flat", random_dim)
            _merge_methods(main)
            stats["dense-hnsw"] = variant(main, hnsw, "hnsw")
        else:
            stats["dense-flat"] = cli_build(corpus, main, "bm25,dense")
            stats["dense-hnsw"] = variant(main, hnsw, "hnsw")
        stats["built_at"] = time.strftime("%Y-%m-%d %H:%M")
        save_json(stats_path, stats)
    return {"bm25": (main, "bm25"), "dense-flat": (main, "dense"), "dense-hnsw": (hnsw, "dense"),
            "hybrid": (main, "hybrid")}


def _merge_methods(index_dir: Path) -> None:
    """After `variant(main, main, ...)` index.json lists only dense: put bm25 back."""
    meta_path = index_dir / "index.json"
    meta = json.loads(meta_path.read_text())
    bm25 = json.loads((index_dir / "bm25" / "searchr1.json").read_text())
    meta["methods"] = {"bm25": bm25, **meta["methods"]}
    meta_path.write_text(json.dumps(meta, indent=2))


def build_rows(name: str, variants: dict, repeats: int, random_dim: int) -> list[list]:
    stats = json.loads((CACHE / f"{name}.build.json").read_text())
    rows = []
    for retriever, (index_dir, method) in variants.items():
        loads = []
        for _ in range(repeats):
            wall, rss, out = run_measured([PY, __file__, "_load", str(index_dir), method])
            loads.append((json.loads(out)["open_s"], rss))
        open_s = sorted(x[0] for x in loads)[len(loads) // 2]
        load_rss = sorted(x[1] for x in loads)[len(loads) // 2]
        sub = {"bm25": ["bm25"], "dense-flat": ["dense"], "dense-hnsw": ["dense"], "hybrid": ["bm25", "dense"]}[retriever]
        size = sum(dir_size_mib(index_dir / s) for s in sub if s != "dense")
        if "dense" in sub:
            size += (index_dir / "dense" / "index.faiss").stat().st_size / 2**20
        b = stats.get(retriever)
        note = {"bm25": "tokenise + index (+ passage store)",
                "dense-flat": "random vectors written + index" if random_dim else "encode passages + index",
                "dense-hnsw": "from saved embeddings", "hybrid": "bm25 + dense-flat"}[retriever]
        rows.append([retriever, f"{b['seconds']:.1f}" if b else "-", f"{b['peak_rss_mib']:.0f}" if b else "-",
                     note, size, open_s, load_rss])
    return rows


# ----------------------------------------------------------------------------- serving


def serve_rows(variants: dict, queries: list[str], args) -> tuple[list[list], list[dict]]:
    from searchr1.retrieval.process import ServerProcess

    rows, raw = [], []
    for retriever, (index_dir, method) in variants.items():
        measured = {}
        for batching in (True, False):
            overrides = [f"retriever.index={index_dir}", f"retriever.method={method}", "server.port=0",
                         f"server.batching={str(batching).lower()}"]
            srv = ServerProcess(overrides)
            url = srv.start() + "/retrieve"
            try:
                run_load(url, [[q] for q in queries[:64]], 8)  # warm-up (lazy imports, caches)
                big = [queries[i : i + 32] for i in range(0, len(queries), 32)]
                batch = median_run(lambda: run_load(url, big[: args.batch_requests], 1, max_seconds=args.max_seconds),
                                   args.repeats)
                singles = [[q] for q in queries[: args.requests]]
                conc = median_run(lambda: run_load(url, singles, 32, max_seconds=args.max_seconds), args.repeats)
                rss = vm_hwm_mib(srv.proc.pid)
            finally:
                srv.stop()
            measured[batching] = (batch, conc, rss)
            raw.append({"retriever": retriever, "batching": batching, "batch_qps": batch.qps,
                        "concurrent_qps": conc.qps, "concurrent_p50_ms": conc.pct(50), "concurrent_p99_ms": conc.pct(99),
                        "errors": batch.errors + conc.errors, "server_peak_rss_mib": rss})
        (b, c, rss), (bb, bc, _) = measured[True], measured[False]
        rows.append([retriever, b.qps, b.pct(50), b.pct(99), c.qps, c.pct(50), c.pct(99), bc.qps, bc.pct(99),
                     f"{c.qps / bc.qps:.1f}x", rss, b.errors + c.errors + bb.errors + bc.errors])
    return rows, raw


# ----------------------------------------------------------------------------- quality


def quality_rows(variants: dict, limit: int) -> list[list]:
    from searchr1.data.qa import read_qa
    from searchr1.retrieval.evaluate import answer_recall
    from searchr1.retrieval.local import open_index
    from searchr1.retrieval.settings import RetrieverConfig

    sets = {"NQ dev": SHARED_DATA / "nq" / "NQ-open.dev.jsonl", "HotpotQA dev": SHARED_DATA / "hotpotqa" / "dev.json"}
    data = {name: read_qa(path, limit) for name, path in sets.items()}
    rows = []
    for retriever, (index_dir, method) in variants.items():
        r = open_index(RetrieverConfig(index=str(index_dir), method=method))
        for name, records in data.items():
            res = answer_recall(r, [x["question"] for x in records], [x["golden_answers"] for x in records], KS)
            rows.append([name, retriever, res["questions"], *(res[f"recall@{k}"] for k in KS)])
        r.close()
    return sorted(rows, key=lambda row: row[0], reverse=True)


# ----------------------------------------------------------------------------- synthetic corpus


def synthetic_corpus(n_docs: int, seed: int = 0) -> tuple[Path, list[str]]:
    """n_docs passages of ~80 words drawn from a Zipfian vocabulary; queries = 8 words of a passage."""
    path = CACHE / f"synthetic-{n_docs}.jsonl"
    rng = np.random.default_rng(seed)
    syll = np.array([a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")])
    vocab_size = 50_000
    words = np.array(["".join(syll[rng.integers(0, len(syll), 3)]) + str(i % 7) for i in range(vocab_size)])
    probs = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    probs /= probs.sum()
    queries = []
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for s in range(0, n_docs, 50_000):
                m = min(50_000, n_docs - s)
                tokens = words[rng.choice(vocab_size, size=(m, 80), p=probs)]
                for j in range(m):
                    f.write(json.dumps({"id": str(s + j), "title": f"{tokens[j, 0]} {tokens[j, 1]}",
                                        "text": " ".join(tokens[j, 2:])}) + "\n")
        os.replace(tmp, path)
    qrng = np.random.default_rng(seed + 1)
    for _ in range(5000):
        queries.append(" ".join(words[qrng.choice(vocab_size, size=8, p=probs)]))
    return path, queries


# ----------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_variant":
        return child_variant(*sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return child_load(*sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED_DATA / "corpus" / "wiki18_mini.jsonl")
    p.add_argument("--synthetic-docs", type=int, default=1_000_000, help="0 skips the synthetic corpus")
    p.add_argument("--no-wiki", action="store_true", help="skip wiki18_mini (synthetic corpus only)")
    p.add_argument("--sections", default="build,serve,quality")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000, help="single-query requests per concurrent run")
    p.add_argument("--batch-requests", type=int, default=40, help="32-query requests per batch run")
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap on one load run (slow baselines)")
    p.add_argument("--qa-limit", type=int, default=0, help="questions per QA set (0: all)")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval.json")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"# searchr1 retrieval benchmark — {time.strftime('%Y-%m-%d')} — {machine()}")

    from searchr1.data.qa import read_qa

    corpora = {}
    if not args.no_wiki:
        corpora["wiki18_mini"] = (args.corpus, [r["question"] for r in read_qa(SHARED_DATA / "nq" / "NQ-open.dev.jsonl")], 0)
    if args.synthetic_docs:
        path, queries = synthetic_corpus(args.synthetic_docs)
        corpora[f"synthetic-{args.synthetic_docs // 1000}k"] = (path, queries, 384)
    results: dict = {}
    for name, (corpus, queries, random_dim) in corpora.items():
        variants = build_corpus(name, corpus, args.rebuild, random_dim)
        results[name] = {}
        if "build" in sections:
            rows = build_rows(name, variants, args.repeats, random_dim)
            print(table(f"{name}: build and load", ["retriever", "build s", "build peak RSS MiB", "build covers", "index MiB",
                                                      "load s", "loaded RSS MiB"], rows))
            results[name]["build"] = rows
        if "serve" in sections:
            rows, raw = serve_rows(variants, queries, args)
            print(table(f"{name}: serving (queries/s; latency ms per request; baseline = batching off)",
                        ["retriever", "(a) batch32 q/s", "p50", "p99", "(b) 32 clients q/s", "p50", "p99",
                         "baseline (b) q/s", "baseline p99", "(b) x baseline", "server RSS MiB", "errors"], rows))
            results[name]["serve"] = raw
        if "quality" in sections and not random_dim:
            rows = quality_rows(variants, args.qa_limit)
            print(table(f"{name}: answer recall (gold answer string in the top-k passages)",
                        ["dataset", "retriever", "questions", *(f"recall@{k}" for k in KS)], rows))
            results[name]["quality"] = rows
    save_json(args.out, results)
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
