"""`searchr1 demo`: the built-in end-to-end run on a synthetic world, no downloads needed.

Today it exercises the search engine: it writes the synthetic encyclopedia and its questions,
builds BM25 and dense indexes, serves them over HTTP on 127.0.0.1, and measures answer recall of
each retriever on held-out questions, in process and through the HTTP client.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from searchr1.data.synthetic import Question, build_world, make_questions, split_questions
from searchr1.retrieval.build import build_index
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.corpus import write_passages
from searchr1.retrieval.evaluate import answer_recall
from searchr1.retrieval.local import open_index
from searchr1.retrieval.server import BackgroundServer
from searchr1.settings import Config


def _write_if_changed(path: Path, write) -> None:
    """Write via `write(tmp_path)`; keep the old file (and its mtime) when the bytes are equal."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, path)


def _write_questions(questions: list[Question], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")

    _write_if_changed(path, write)


def prepare_world(cfg: Config) -> tuple[Path, list[Question], list[Question]]:
    w = cfg.demo.world
    world = build_world(w.seed, w.countries, w.cities_per_country, w.people, w.organisations)
    train, test = split_questions(make_questions(world), w.test_fraction, w.seed)
    data = Path(cfg.demo.dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    corpus = data / "corpus.jsonl"
    _write_if_changed(corpus, lambda tmp: write_passages(world.passages(), tmp))
    _write_questions(train, data / "train.jsonl")
    _write_questions(test, data / "test.jsonl")
    return corpus, train, test


def run_demo(cfg: Config, console) -> dict:
    t0 = time.perf_counter()
    corpus, train, test = prepare_world(cfg)
    console.print(f"[bold]1/3[/] synthetic world: {corpus} ({sum(1 for _ in open(corpus))} passages), "
                  f"{len(train)} train / {len(test)} test questions")

    index_dir = Path(cfg.demo.dir) / "index"
    index_cfg = dataclasses.replace(cfg.index, corpus=str(corpus), dir=str(index_dir), methods=cfg.demo.methods)
    meta = build_index(index_cfg, progress=True)
    console.print(f"[bold]2/3[/] index {index_dir}: {meta['num_docs']} passages, methods {sorted(meta['methods'])}")

    questions = test[: cfg.demo.max_questions]
    texts = [q.question for q in questions]
    answers = [q.golden_answers for q in questions]
    methods = list(cfg.demo.methods) + (["hybrid"] if {"bm25", "dense"} <= set(cfg.demo.methods) else [])
    rows = []
    for method in methods:
        rcfg = dataclasses.replace(cfg.retriever, index=str(index_dir), url="", method=method)
        retriever = open_index(rcfg)
        try:
            local = answer_recall(retriever, texts, answers)
            server_cfg = dataclasses.replace(cfg.server, port=0, host="127.0.0.1")
            with BackgroundServer(retriever, server_cfg, info={"method": method}) as url:
                with HttpRetriever(url) as client:
                    remote = answer_recall(client, texts, answers)
                    example = client.search([texts[0]], 3)[0]
        finally:
            retriever.close()
        rows.append({"method": method, "local": local, "http": remote, "example": example})
    report = {
        "questions": len(questions),
        "rows": [{"method": r["method"], **{k: r["local"][k] for k in ("recall@1", "recall@3", "recall@10")},
                  "http_matches_local": all(r["local"][k] == r["http"][k] for k in ("recall@1", "recall@3", "recall@10")),
                  "http_queries_per_s": r["http"]["queries_per_s"]} for r in rows],
        "seconds": time.perf_counter() - t0,
    }
    _print_report(console, report, questions[0], rows[-1])
    out = Path(cfg.demo.dir) / "retrieval_report.json"
    out.write_text(json.dumps(report, indent=2))
    console.print(f"written {out}  ({report['seconds']:.1f} s in all)")
    return report


def _print_report(console, report: dict, question: Question, row: dict) -> None:
    from rich.table import Table

    table = Table(title=f"[bold]3/3[/] answer recall on {report['questions']} held-out synthetic questions")
    for col in ("retriever", "recall@1", "recall@3", "recall@10", "HTTP = in-process", "HTTP q/s"):
        table.add_column(col, justify="left" if col == "retriever" else "right")
    for r in report["rows"]:
        table.add_row(r["method"], f"{r['recall@1']:.3f}", f"{r['recall@3']:.3f}", f"{r['recall@10']:.3f}",
                      "yes" if r["http_matches_local"] else "[red]NO[/]", f"{r['http_queries_per_s']:.0f}")
    console.print(table)
    console.print(f"example ({row['method']} over HTTP): [cyan]{question.question}[/] "
                  f"(gold: {', '.join(question.golden_answers)})")
    for i, hit in enumerate(row["example"]):
        console.print(f"  Doc {i + 1}(Title: {hit.title}) {hit.text}  [dim]score {hit.score:.3f}[/]")
