"""`searchr1 <command>`: one entry point. Every command reads the root `Config`.

  searchr1 index build index.corpus=wiki.jsonl index.dir=runs/wiki index.methods=bm25,dense
  searchr1 index memory --n 21015324 --dim 768             (server memory per index type, no index needed)
  searchr1 serve retriever.index=runs/wiki server.port=8000
  searchr1 serve retriever.method=serper server.port=8000   (web search behind Search-R1's API; key in $SERPER_API_KEY)
  searchr1 search "who wrote hamlet" retriever.index=runs/wiki
  searchr1 ask "who wrote hamlet" retriever.index=runs/wiki model.name=HuggingFaceTB/SmolLM2-135M-Instruct
  searchr1 eval eval.datasets=nq,hotpotqa eval.limit=200 retriever.index=runs/wiki
  searchr1 train -c paper-grpo-qwen2.5-3b retriever.url=http://127.0.0.1:8000
  searchr1 export verl -c paper-grpo-qwen2.5-3b --out runs/verl --retriever-url http://HOST:8000
  searchr1 demo
  searchr1 study study.arms=[rag,grpo] study.seeds=[0,1,2]   (default preset: study-synthetic; resumable)
  searchr1 config show -c cpu-demo server.port=9000      (the resolved config, as YAML)
  searchr1 config keys                                    (every key, its type, default and help)

`-c NAME_OR_PATH` picks a YAML preset (bundled: see `searchr1 config presets`); KEY=VALUE
arguments override single fields by their dotted path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from searchr1 import __version__
from searchr1.allocator import tune_malloc
from searchr1.config import describe, load_config, preset_names, to_yaml
from searchr1.errors import SearchR1Error
from searchr1.settings import Config

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _load(args) -> Config:
    return load_config(Config, args.config, args.overrides)


# ----------------------------------------------------------------------------- commands


def cmd_index_build(args) -> int:
    from searchr1.retrieval.build import build_index

    cfg = _load(args)
    meta = build_index(cfg.index, progress=not args.quiet)
    summary = {m: {k: v for k, v in s.items() if k in ("build_seconds", "num_docs", "factory", "vocab_size")}
               for m, s in meta["methods"].items()}
    print(f"searchr1: index {cfg.index.dir}: {meta['num_docs']} passages "
          f"({meta['skipped_lines']} malformed lines skipped); {json.dumps(summary)}")
    return 0


def cmd_index_memory(args) -> int:
    from searchr1.errors import ConfigError
    from searchr1.index_memory import DEFAULT_INDEXES, format_memory_table, memory_table

    cfg = _load(args)
    dense = cfg.index.dense  # the aliases' hnsw_m, ivf_nlist, pq_m, train_size; its index_type joins the table
    defaults = [*DEFAULT_INDEXES, *([dense.index_type] if dense.index_type not in DEFAULT_INDEXES else [])]
    try:
        rows = memory_table(args.n, args.dim, (args.index or defaults) + args.extra, dense=dense, metric=args.metric,
                            bm25_nnz_per_doc=args.bm25_nnz_per_doc, bm25_vocab_size=args.bm25_vocab,
                            avg_passage_bytes=args.avg_passage_bytes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"Memory for n = {args.n:,} passages (embedding dimension {args.dim} unless stated):\n")
    print(format_memory_table(rows))
    return 0


def cmd_serve(args) -> int:
    from searchr1.retrieval import registry
    from searchr1.retrieval.local import open_index, open_retriever
    from searchr1.retrieval.server import serve

    cfg = _load(args)
    service = cfg.retriever.method != "auto" and registry.get(cfg.retriever.method).service
    if not cfg.retriever.index and not service:
        raise SearchR1Error("serve needs an index: retriever.index=DIR (build one with `searchr1 index build`), "
                            f"or a service: retriever.method={'|'.join(registry.services())}")
    retriever = open_retriever(cfg.retriever) if service else open_index(cfg.retriever)
    info = {"method": retriever.method, "num_docs": retriever.num_docs, "index": cfg.retriever.index}
    try:
        serve(retriever, cfg.server, default_topk=cfg.retriever.topk, info=info)
    finally:
        retriever.close()
    return 0


def cmd_search(args) -> int:
    from searchr1.retrieval.local import open_retriever

    cfg = _load(args)
    if not args.queries:
        raise SearchR1Error('give at least one query: searchr1 search "your question" retriever.index=DIR')
    retriever = open_retriever(cfg.retriever)
    try:
        results = retriever.search(args.queries, cfg.retriever.topk)
    finally:
        getattr(retriever, "close", lambda: None)()
    if args.json:
        print(json.dumps([[{"id": h.doc_id, "title": h.title, "text": h.text, "score": h.score} for h in row]
                          for row in results], ensure_ascii=False, indent=2))
        return 0
    console = _console()
    for query, hits in zip(args.queries, results):
        console.print(f"[bold cyan]{query}[/]")
        if not hits:
            console.print("  (no passage matches)")
        for i, h in enumerate(hits):
            console.print(f"  [bold]Doc {i + 1}[/](Title: {h.title}) {h.text}  [dim]score {h.score:.4f} id {h.doc_id}[/]")
    return 0


def cmd_ask(args) -> int:
    from searchr1.eval.ask import ask

    cfg = _load(args)
    question = " ".join(args.queries).strip()
    if not question:
        raise SearchR1Error('give a question: searchr1 ask "who wrote hamlet" retriever.index=DIR')
    ask(cfg, question, _console())
    return 0


def cmd_eval(args) -> int:
    from searchr1.eval.harness import evaluate, print_summary

    cfg = _load(args)
    console = _console()
    results = evaluate(cfg, console)
    print_summary(results, console)
    console.print(f"searchr1: eval results in {cfg.eval.out_dir} (results.json, results.md"
                  f"{', report.html' if cfg.eval.html else ''}, trajectories.*.jsonl)", markup=False)
    return 0


def cmd_data_prepare(args) -> int:
    from searchr1.data.prepare import prepare_from_config

    cfg = _load(args)
    # Prompts are stored as filled template text, model-agnostic: the chat template (if any) is
    # applied when a model reads them, as veRL does with its `prompt` column.
    summary = prepare_from_config(cfg.data, cfg.agent.template)
    for name, f in summary["files"].items():
        print(f"searchr1: {name} ({f['split']}, {f['source']}): {f['rows']} rows -> {f['path']}")
    return 0


def cmd_train(args) -> int:
    from searchr1.train.trainer import train

    cfg = _load(args)
    console = _console()
    result = train(cfg, console)
    if result["rank"] != 0:  # under torchrun / accelerate launch, rank 0 reports
        return 0
    m = result["metrics"]
    summary = ", ".join(f"{k} {m[k]:.4f}" for k in ("reward/mean", "reward/em") if k in m)
    console.print(f"searchr1: trained {cfg.train.algorithm} to step {result['step']} ({summary}); "
                  f"checkpoint {result['checkpoint']}; metrics in {cfg.train.run_dir}/metrics.jsonl", markup=False)
    return 0


def cmd_export_verl(args) -> int:
    from searchr1.export.verl import ExportOptions, export_verl

    cfg = _load(args)
    opts = ExportOptions(out_dir=args.out, force=args.force, agent=args.agent, retriever_url=args.retriever_url or "",
                         rollout=args.rollout, nnodes=args.nnodes, gpus_per_node=args.gpus_per_node,
                         config_name=args.config or "")
    summary = export_verl(cfg, opts)
    print(f"searchr1: veRL export in {summary['out_dir']}: {summary['train_rows']} train / {summary['val_rows']} val "
          f"questions, agent {summary['agent_name']}, retriever {summary['retriever_url']}; "
          f"run `bash {summary['out_dir']}/train.sh` on the GPU cluster (see README.md there)")
    for note in summary["notes"]:
        print(f"searchr1: note: {note}")
    return 0


def cmd_demo(args) -> int:
    from searchr1.demo import run_demo

    if args.config is None:
        args.config = "cpu-demo"
    run_demo(_load(args), _console())
    return 0


def cmd_study(args) -> int:
    from searchr1.study.runner import export_records, run_study

    if args.config is None:
        args.config = "study-synthetic"
    cfg = _load(args)
    console = _console()
    if args.export:
        written = export_records(Path(cfg.study.dir), Path(args.export))
        console.print(f"searchr1: {len(written)} files of {cfg.study.dir} copied to {args.export} "
                      f"(continue the study elsewhere with study.records={args.export})", markup=False)
        return 0
    run_study(cfg, console)
    console.print(f"searchr1: study results in {cfg.study.dir} (study.json, study.md, study.html, plots/)",
                  markup=False)
    return 0


def cmd_config_show(args) -> int:
    sys.stdout.write(to_yaml(_load(args)))
    return 0


def cmd_config_keys(args) -> int:
    print(describe(Config))
    return 0


def cmd_config_presets(args) -> int:
    print("\n".join(preset_names()))
    return 0


# ----------------------------------------------------------------------------- parsing


def _with_config(p: argparse.ArgumentParser, positional: str | None = None) -> argparse.ArgumentParser:
    p.add_argument("-c", "--config", help="YAML preset name (see `searchr1 config presets`) or path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. server.port=8001")
    return p


def _index_memory_parser(index) -> None:
    from searchr1.index_memory import AVG_PASSAGE_BYTES, BM25_NNZ_PER_DOC, DEFAULT_INDEXES, WIKI18_PASSAGES

    p = _with_config(index.add_parser(
        "memory", help="memory of each faiss index type, BM25 and the passage store for n passages (Markdown "
                       "table); the aliases follow index.dense.*"))
    p.add_argument("--n", type=int, default=WIKI18_PASSAGES, help="passages (default: wiki-18, 21,015,324)")
    p.add_argument("--dim", type=int, default=768, help="embedding dimension (e5-base: 768, MiniLM: 384)")
    p.add_argument("--index", action="append", metavar="SPEC[@DIM]",
                   help=f"index to include (repeatable; replaces the defaults {', '.join(DEFAULT_INDEXES)} "
                        "and index.dense.index_type)")
    p.add_argument("--extra", action="append", default=[], metavar="SPEC[@DIM]",
                   help="index to add after the defaults, e.g. flat@384")
    p.add_argument("--metric", choices=["ip", "l2"], default="ip")
    p.add_argument("--avg-passage-bytes", type=float, default=AVG_PASSAGE_BYTES)
    p.add_argument("--bm25-nnz-per-doc", type=float, default=BM25_NNZ_PER_DOC)
    p.add_argument("--bm25-vocab", type=int, default=None, help="BM25 vocabulary size (default: Heaps' law estimate)")
    p.set_defaults(func=cmd_index_memory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchr1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"searchr1 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="build search indexes, or size them").add_subparsers(
        dest="index_command", required=True)
    p = _with_config(index.add_parser("build", help="corpus JSONL -> BM25 and/or dense index directory"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_index_build)
    _index_memory_parser(index)

    _with_config(sub.add_parser("serve", help="serve an index over HTTP (Search-R1's /retrieve API)")).set_defaults(
        func=cmd_serve)

    p = _with_config(sub.add_parser("search", help="search an index (or a server) from the command line"))
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.set_defaults(func=cmd_search, split_queries=True)

    p = _with_config(sub.add_parser("ask", help="one question through the search agent, printed turn by turn"))
    p.set_defaults(func=cmd_ask, split_queries=True)

    _with_config(sub.add_parser("eval", help="evaluate a model on QA benchmarks: direct, rag and agent modes")
                 ).set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="QA benchmark data").add_subparsers(dest="data_command", required=True)
    _with_config(data.add_parser("prepare", help="benchmarks -> parquet (id, question, golden_answers, prompt)")
                 ).set_defaults(func=cmd_data_prepare)

    _with_config(sub.add_parser("train", help="RL-train the policy (PPO or GRPO) over multi-turn search rollouts")
                 ).set_defaults(func=cmd_train)

    export = sub.add_parser("export", help="export data, reward and retrieval wiring to other trainers").add_subparsers(
        dest="export_command", required=True)
    p = _with_config(export.add_parser(
        "verl", help="veRL (multi-node, vLLM/SGLang rollouts): parquet data, reward, agent loop / tool, launch script"))
    p.add_argument("-o", "--out", default="runs/verl", help="output directory (default runs/verl)")
    p.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    p.add_argument("--agent", choices=["searchr1", "tool"], default="searchr1",
                   help="searchr1: the paper's <search>/<information> protocol as a veRL agent loop (default); "
                        "tool: veRL's JSON tool-calling loop with a search tool")
    p.add_argument("--retriever-url", default=None,
                   help="URL of `searchr1 serve` that every rollout worker reaches (default retriever.url, "
                        "else http://127.0.0.1:8000)")
    p.add_argument("--rollout", choices=["vllm", "sglang"], default="vllm", help="veRL rollout engine")
    p.add_argument("--nnodes", type=int, default=1, help="nodes (train.sh default; NNODES overrides)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (GPUS_PER_NODE overrides)")
    p.set_defaults(func=cmd_export_verl)

    _with_config(sub.add_parser("demo", help="the built-in end-to-end run (synthetic world)")).set_defaults(
        func=cmd_demo)

    p = _with_config(sub.add_parser(
        "study", help="the paper's comparison: baselines and trained arms, seeds, intervals, paired tests (resumable;"
                      " default preset study-synthetic)"))
    p.add_argument("--export", metavar="DIR", help="copy the study's report, settings and records (not its models) "
                                                  "to DIR and exit; study.records=DIR continues it on another machine")
    p.set_defaults(func=cmd_study)

    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="config_command", required=True)
    _with_config(config.add_parser("show", help="print the resolved config as YAML")).set_defaults(func=cmd_config_show)
    config.add_parser("keys", help="list every config key with type, default and help").set_defaults(
        func=cmd_config_keys)
    config.add_parser("presets", help="list the bundled presets").set_defaults(func=cmd_config_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()  # before the first large tensor: glibc's mmap/trim thresholds (searchr1.allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "split_queries", False):
        # `search` and `ask` take free text and KEY=VALUE overrides in any order.
        args.queries = [a for a in args.overrides if not _OVERRIDE.match(a)]
        args.overrides = [a for a in args.overrides if _OVERRIDE.match(a)]
    else:
        bad = [a for a in getattr(args, "overrides", []) if not _OVERRIDE.match(a)]
        if bad:
            parser.error(f"expected KEY=VALUE overrides, got {bad[0]!r}")
    try:
        return args.func(args)
    except SearchR1Error as e:
        print(f"searchr1: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchr1: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
