"""`searchr1 eval`: one model, one retriever, benchmarks x modes -> honest numbers and reports.

For every dataset and every mode the harness builds the prompts, plays the episodes in a pool of
`eval.batch_size` (continuous batching) with the same agent loop that training uses, scores
every trajectory with `searchr1.rewards` (the reward function of training, so the numbers mean
the same thing), and aggregates them (`searchr1.eval.metrics`). The datasets are `cfg.eval.datasets` (`searchr1.data.questions`), or
rows the caller passes in memory (`questions=`). The modes:

  direct  DIRECT_TEMPLATE, one turn, no retrieval
  rag     RAG_TEMPLATE with the top-k passages retrieved for the question, one turn
  agent   the Search-R1 template and loop (search up to agent.max_turns times, then answer)

`direct` and `rag` run the agent with `max_turns=0`: every turn is final, nothing is searched.
Greedy decoding by default, so a run is a function of (model, retriever, data, config).

Files written to `eval.out_dir`:
  results.json                       config, metrics per dataset x mode, environment, and the
                                     retriever's own counters when it keeps them (web requests,
                                     estimated cost, cache hits and misses: `retriever_metrics`)
  results.md                         the metric tables in Markdown
  trajectories.<dataset>.<mode>.jsonl every episode (text, turns, retrieved ids) with its scores
  report.html                        the tables and the episodes, readable in a browser
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from searchr1 import __version__
from searchr1.atomic import write_text_atomic
from searchr1.data.questions import load_datasets
from searchr1.errors import SearchR1Error
from searchr1.eval.html import render_report
from searchr1.eval.metrics import aggregate, average_metrics, markdown_report, metric_tables, score_trajectory
from searchr1.protocol import DIRECT_TEMPLATE, RAG_TEMPLATE, build_prompt, format_documents, get_template
from searchr1.retrieval.base import metrics_since
from searchr1.retrieval.local import open_retriever
from searchr1.rollout.agent import Agent, RolloutStats, new_trajectory, search_with_retries
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.memory import engine_pool
from searchr1.rollout.trajectory import Trajectory
from searchr1.toolcall import tools_for

# Queries per retrieval request of the rag mode (under the HTTP server's default request limit).
RAG_QUERIES_PER_CALL = 256


@dataclass
class Run:
    """One dataset x mode: its episodes, their scores and the aggregate."""

    dataset: str
    mode: str
    trajectories: list[Trajectory] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        """One JSON-able dict per episode: `Trajectory.to_dict(with_ids=False)` plus `scores`."""
        return [trajectory_record(t, s) for t, s in zip(self.trajectories, self.scores)]


def trajectory_record(traj: Trajectory, scores: dict) -> dict:
    record = traj.to_dict(with_ids=False)
    record["scores"] = scores
    return record


# ----------------------------------------------------------------------------- data and prompts


def retrieve_documents(retriever, questions: Sequence[str], agent_cfg) -> tuple[list[list], float]:
    """Top-k hits for every question (batched, retried like the agent's searches), and the seconds."""
    t0 = time.perf_counter()
    hits: list[list] = []
    for start in range(0, len(questions), RAG_QUERIES_PER_CALL):
        chunk = list(questions[start:start + RAG_QUERIES_PER_CALL])
        hits += search_with_retries(retriever, chunk, agent_cfg.topk, agent_cfg.retrieval_attempts,
                                    agent_cfg.retrieval_backoff_s)
    return hits, time.perf_counter() - t0


def build_trajectories(cfg, tokenizer, label: str, rows: Sequence[dict], mode: str,
                       hits: Sequence[Sequence] | None = None) -> list[Trajectory]:
    """Fresh episodes of one dataset in one mode (rag: `hits[i]` are row i's passages)."""
    chat = cfg.model.use_chat_template
    template = {"direct": DIRECT_TEMPLATE, "rag": RAG_TEMPLATE}.get(mode) or get_template(cfg.agent.template)
    out = []
    for i, row in enumerate(rows):
        meta = {"dataset": label, "mode": mode, "data_source": row.get("data_source", label)}
        documents = ""
        if mode == "rag":
            documents = format_documents(hits[i])
            meta["doc_ids"] = [h.doc_id for h in hits[i]]
            meta["documents"] = documents
        prompt = build_prompt(row["question"], tokenizer, template=template, chat=chat, documents=documents,
                              tools=tools_for(cfg.agent.protocol) if mode == "agent" else None)
        out.append(new_trajectory(tokenizer, prompt, row["question"], row["golden_answers"], id=str(row["id"]),
                                  group=i, meta=meta))
    return out


# ----------------------------------------------------------------------------- environment


def _version(module: str) -> str | None:
    try:
        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def environment(cfg, generator, retriever, model_name: str | None = None) -> dict:
    """What produced the numbers: model, device, retriever, decoding, date, library versions.
    `model_name` defaults to cfg.model.name (pass it when the generator did not come from there)."""
    import torch

    model = getattr(generator, "model", None)
    device = str(getattr(generator, "device", "")) or None
    dtype = None
    params = None
    if model is not None and hasattr(model, "parameters"):
        first = next(model.parameters(), None)
        dtype = str(first.dtype).replace("torch.", "") if first is not None else None
        params = sum(p.numel() for p in model.parameters())
    rcfg = cfg.retriever
    # a service (web or simulated search) has no index or URL: it names its own source
    where = rcfg.url or rcfg.index or getattr(retriever, "source", "")
    method = getattr(retriever, "method", None) or (rcfg.method if retriever is not None else None)
    retr = {"index": rcfg.index, "url": rcfg.url, "method": method, "source": where,
            "num_docs": getattr(retriever, "num_docs", None), "topk": cfg.agent.topk,
            "description": f"{method} over {where} (top-{cfg.agent.topk})" if retriever is not None else "none"}
    ev = cfg.eval
    decoding = "greedy" if ev.temperature == 0 else f"temperature {ev.temperature}, seed {ev.seed}"
    gpu = torch.cuda.get_device_name(0) if device and device.startswith("cuda") else None
    return {
        "model": model_name or cfg.model.name,
        "device": device,
        "gpu": gpu,
        "dtype": dtype,
        "parameters": params,
        "chat": cfg.model.chat,
        "retriever": retr,
        "decoding": decoding,
        "agent": dataclasses.asdict(cfg.agent),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"searchr1": __version__, "torch": torch.__version__,
                     **{m: _version(m) for m in ("transformers", "bm25s", "faiss-cpu", "accelerate")}},
    }


# ----------------------------------------------------------------------------- output


def trajectories_path(out_dir: str | os.PathLike, dataset: str, mode: str) -> Path:
    return Path(out_dir) / f"trajectories.{dataset}.{mode}.jsonl"


def write_trajectories(path: Path, records: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_trajectories(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_reports(out: Path, results: dict, runs: list[Run], html: bool, html_max: int) -> None:
    write_text_atomic(out / "results.json", json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown_report(results))
    if html:
        page = render_report(results, {(r.dataset, r.mode): r.records() for r in runs}, max_per_run=html_max)
        write_text_atomic(out / "report.html", page)


# ----------------------------------------------------------------------------- the harness


class _Progress:
    """Episodes done / total, with the live count, on a rich console (silent without one)."""

    def __init__(self, console, total: int) -> None:
        self.bar = None
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("episodes"), TimeElapsedColumn(), console=console)
            self.task = self.bar.add_task("eval", total=total)
            self.bar.start()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None and n:
            self.bar.advance(self.task, n)

    def tracker(self, name: str, total: int) -> Callable[[RolloutStats], None]:
        """An `Agent.run` progress callback that advances the bar by the episodes that ended."""
        counted = 0

        def on_progress(stats: RolloutStats) -> None:
            nonlocal counted
            self.advance(stats.episodes - counted)
            counted = stats.episodes
            self.describe(f"{name} ({stats.episodes}/{total} done, {stats.max_live} live at most)")
        return on_progress

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_mode(cfg, generator, retriever, label: str, rows: Sequence[dict], mode: str,
             progress: _Progress | None = None) -> Run:
    """Play and score every question of one dataset in one mode."""
    ev = cfg.eval
    run = Run(label, mode)
    hits, retrieve_s = None, 0.0
    if mode == "rag":
        hits, retrieve_s = retrieve_documents(retriever, [r["question"] for r in rows], cfg.agent)
    run.trajectories = build_trajectories(cfg, generator.tokenizer, label, rows, mode, hits)
    if mode == "agent":
        agent = Agent(generator, retriever, cfg.agent)
    else:
        # the baselines ask for <answer> tags and no search, whatever the agent's protocol
        agent = Agent(generator, None, dataclasses.replace(cfg.agent, max_turns=0, protocol="tags"))
    timing = {"retrieve_seconds": retrieve_s, "generate_seconds": 0.0, "agent_seconds": 0.0,
              "retrieval_calls": 1 if mode == "rag" else 0, "searches": 0}
    t0 = time.perf_counter()
    params = SamplingParams(temperature=ev.temperature, seed=ev.seed)
    on_progress = None if progress is None else progress.tracker(f"{label}/{mode}", len(rows))
    # our engine's slots are all as long as the longest row: bound the pool by the memory it would take
    pool = engine_pool(generator, run.trajectories, ev.batch_size, cfg.agent) if run.trajectories else 1
    stats = agent.run(run.trajectories, params, pool=pool, on_progress=on_progress)
    timing["generate_seconds"] += stats.generate_seconds
    timing["retrieve_seconds"] += stats.retrieve_seconds
    timing["agent_seconds"] += stats.seconds
    timing["retrieval_calls"] += stats.retrieval_calls
    timing["searches"] += stats.searches
    seconds = time.perf_counter() - t0 + retrieve_s
    run.scores = [score_trajectory(t) for t in run.trajectories]
    run.metrics = aggregate(run.trajectories, run.scores, seconds)
    run.timing = timing
    return run


def in_memory_datasets(questions: Mapping[str, Sequence[dict]]) -> dict[str, tuple[dict, list[dict]]]:
    """`load_datasets`' shape for rows a caller already holds (label -> rows)."""
    if not questions:
        raise SearchR1Error("evaluate was given questions=... naming no dataset")
    return {label: ({"name": label, "split": "in memory", "n": len(rows)}, list(rows))
            for label, rows in questions.items()}


def evaluate(cfg, console=None, generator=None, retriever=None,
             questions: Mapping[str, Sequence[dict]] | None = None) -> dict:
    """Run `cfg.eval` (datasets x modes) and write the reports; returns what results.json holds.

    `generator` / `retriever`: already-loaded ones to use (e.g. a trainer evaluating its policy);
    by default the model of `cfg.model` and the retriever of `cfg.retriever` are opened here.
    `questions`: label -> rows {id, question, golden_answers, data_source} to evaluate instead of
    reading `cfg.eval.datasets`; the caller chose the rows, so eval.limit does not apply.
    """
    ev = cfg.eval
    modes = list(ev.modes)
    data = load_datasets(ev) if questions is None else in_memory_datasets(questions)
    for info, rows in data.values():
        if not rows:
            raise SearchR1Error(f"dataset {info['name']!r} has no questions")
    out = Path(ev.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_retriever = False
    if retriever is None and any(m in ("rag", "agent") for m in modes):
        try:
            retriever = open_retriever(cfg.retriever)
        except SearchR1Error as e:
            raise SearchR1Error(f"modes rag and agent need a retriever: {e} (or run eval.modes=direct)") from None
        own_retriever = True
    own_generator = generator is None
    try:
        model_name = None
        if generator is not None:  # not cfg.model's: say what it is
            model_name = (getattr(getattr(getattr(generator, "model", None), "config", None), "_name_or_path", "")
                          or f"{type(getattr(generator, 'model', generator)).__name__} (given to evaluate)")
        else:
            from searchr1.rollout.backend import open_generator

            if console is not None:
                console.print(f"loading {cfg.model.name} ({cfg.rollout.backend}) ...", style="dim", markup=False)
            generator = open_generator(cfg)
        results = {
            "complete": False,
            "config": dataclasses.asdict(cfg),
            "environment": environment(cfg, generator, retriever, model_name),
            "datasets": {label: info for label, (info, _) in data.items()},
            "metrics": {label: {} for label in data},
            "timing": {label: {} for label in data},
            "files": {},
        }
        # the retriever's counters (web and simulated search, the query cache) are cumulative: this
        # evaluation's share is what they counted while it ran (a trainer's retriever counted before)
        read_search = getattr(retriever, "metrics", None)
        search_start = read_search() if read_search is not None else None
        if search_start is not None:
            results["retriever_metrics"] = {"total": {}, "runs": {label: {} for label in data}}
        total = sum(len(rows) for _, rows in data.values()) * len(modes)
        progress = _Progress(console, total)
        runs: list[Run] = []
        try:
            for label, (_, rows) in data.items():
                for mode in modes:
                    search_before = read_search() if search_start is not None else None
                    run = run_mode(cfg, generator, retriever, label, rows, mode, progress)
                    runs.append(run)
                    if search_start is not None:
                        search_now = read_search()
                        results["retriever_metrics"]["runs"][label][mode] = metrics_since(search_before, search_now)
                        results["retriever_metrics"]["total"] = metrics_since(search_start, search_now)
                    path = trajectories_path(out, label, mode)
                    write_trajectories(path, run.records())
                    results["metrics"][label][mode] = run.metrics
                    results["timing"][label][mode] = run.timing
                    results["files"][f"{label}/{mode}"] = path.name
                    _write_reports(out, results, runs, html=False, html_max=0)  # partial results survive a crash
        finally:
            progress.close()
        if len(data) > 1:
            results["average"] = {mode: average_metrics([results["metrics"][ds][mode] for ds in data])
                                  for mode in modes}
        results["complete"] = True
        _write_reports(out, results, runs, html=ev.html, html_max=ev.html_max_per_run)
        return results
    finally:
        if own_generator and generator is not None:
            generator.close()  # a vLLM engine holds its memory (and worker processes) until closed
        if own_retriever:
            getattr(retriever, "close", lambda: None)()


def print_summary(results: dict, console) -> None:
    """The headline tables on a rich console."""
    from rich.table import Table

    for title, header, rows in metric_tables(results["metrics"])[:-1]:
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="right" if i else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
