"""`searchr1 eval`: one model, one retriever, benchmarks x modes -> honest numbers and reports.

For every dataset and every mode the harness builds the prompts, plays the episodes in batches
with the same agent loop that training uses, scores every trajectory with `searchr1.rewards`
(the reward function of training, so the numbers mean the same thing), and aggregates:

  direct  DIRECT_TEMPLATE, one turn, no retrieval
  rag     RAG_TEMPLATE with the top-k passages retrieved for the question, one turn
  agent   the Search-R1 template and loop (search up to agent.max_turns times, then answer)

`direct` and `rag` run the agent with `max_turns=0`: every turn is final, nothing is searched.
Greedy decoding by default, so a run is a function of (model, retriever, data, config).

Files written to `eval.out_dir`:
  results.json                       config, metrics per dataset x mode, environment
  results.md                         the metric tables in Markdown
  trajectories.<dataset>.<mode>.jsonl every episode (text, turns, retrieved ids) with its scores
  report.html                        the tables and the episodes, readable in a browser
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from searchr1.atomic import write_text_atomic
from searchr1.errors import SearchR1Error
from searchr1.eval.settings import MODES
from searchr1.rollout.trajectory import Trajectory

# Queries per retrieval request of the rag mode (under the HTTP server's default request limit).
RAG_QUERIES_PER_CALL = 256

# Metric keys of `aggregate`, in report order, with the label the tables use.
METRIC_LABELS = {
    "n": "questions",
    "em": "EM",
    "f1": "F1",
    "cover_em": "cover-EM",
    "valid_format": "valid format",
    "answered": "answered",
    "searches": "searches / question",
    "invalid_rate": "invalid-action rate",
    "turns": "turns / question",
    "tokens_mean": "generated tokens / question",
    "tokens_total": "generated tokens",
    "seconds": "wall time (s)",
    "qps": "questions / s",
}


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


# ----------------------------------------------------------------------------- scoring


def score_trajectory(traj: Trajectory) -> dict:
    """`score_breakdown` of the response (answer, em, f1, cover_em, valid_format)."""
    from searchr1.rewards import score_breakdown

    return dict(score_breakdown(traj.response_text, traj.golden_answers))


def trajectory_record(traj: Trajectory, scores: dict) -> dict:
    record = traj.to_dict(with_ids=False)
    record["scores"] = scores
    return record


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def aggregate(trajectories: Sequence[Trajectory], scores: Sequence[dict] | None = None,
              seconds: float = 0.0) -> dict:
    """Metrics of a set of scored episodes (scores computed here when not given).

    em, f1, cover_em, valid_format: means over questions (0..1). answered: share of episodes that
    ended by closing an <answer>. searches, turns: means per question. invalid_rate: invalid turns
    over all turns (pooled). tokens_mean / tokens_total: policy-generated (mask-1) tokens.
    seconds: wall time given by the caller; qps = n / seconds. stop_reasons: counts.
    """
    trajectories = list(trajectories)
    if scores is None:
        scores = [score_trajectory(t) for t in trajectories]
    if len(scores) != len(trajectories):
        raise ValueError(f"{len(trajectories)} trajectories but {len(scores)} scores")
    n = len(trajectories)
    turns = sum(len(t.turns) for t in trajectories)
    tokens = sum(t.generated_tokens for t in trajectories)
    stops: dict[str, int] = {}
    for t in trajectories:
        key = t.stop_reason or "unfinished"
        stops[key] = stops.get(key, 0) + 1
    return {
        "n": n,
        "em": _mean([float(s["em"]) for s in scores]),
        "f1": _mean([float(s["f1"]) for s in scores]),
        "cover_em": _mean([float(s["cover_em"]) for s in scores]),
        "valid_format": _mean([float(s["valid_format"]) for s in scores]),
        "answered": _mean([float(t.stop_reason == "answer") for t in trajectories]),
        "searches": _mean([t.num_searches for t in trajectories]),
        "invalid_rate": sum(t.num_invalid for t in trajectories) / turns if turns else 0.0,
        "turns": turns / n if n else 0.0,
        "tokens_mean": tokens / n if n else 0.0,
        "tokens_total": tokens,
        "seconds": float(seconds),
        "qps": n / seconds if seconds > 0 else 0.0,
        "stop_reasons": dict(sorted(stops.items())),
    }


def average_metrics(per_dataset: Sequence[dict]) -> dict:
    """Macro average over datasets (each dataset weighs the same, as in the paper's 'Avg.')."""
    keys = ("em", "f1", "cover_em", "valid_format", "answered", "searches", "invalid_rate", "turns",
            "tokens_mean")
    out = {k: _mean([m[k] for m in per_dataset]) for k in keys}
    out["n"] = sum(m["n"] for m in per_dataset)
    out["tokens_total"] = sum(m["tokens_total"] for m in per_dataset)
    out["seconds"] = sum(m["seconds"] for m in per_dataset)
    out["qps"] = out["n"] / out["seconds"] if out["seconds"] > 0 else 0.0
    return out


# ----------------------------------------------------------------------------- tables


def _modes_of(metrics: dict) -> list[str]:
    seen = {mode for by_mode in metrics.values() for mode in by_mode}
    return [m for m in MODES if m in seen] + sorted(seen - set(MODES))


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key in ("n", "tokens_total"):
        return f"{int(value):,}"
    if key in ("searches", "turns", "tokens_mean", "seconds", "qps"):
        return f"{value:.1f}" if key in ("tokens_mean", "seconds") else f"{value:.2f}"
    return f"{value:.3f}"


def metric_tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the summary tables: one per headline metric, datasets x modes,
    with a macro-average row when there are several datasets; then a detail table."""
    modes = _modes_of(metrics)
    datasets = list(metrics)
    tables = []
    for key in ("em", "f1", "cover_em", "searches"):
        rows = [[ds] + [_fmt(key, metrics[ds].get(mode, {}).get(key)) for mode in modes] for ds in datasets]
        if len(datasets) > 1:
            avg = []
            for mode in modes:
                have = [metrics[ds][mode][key] for ds in datasets if mode in metrics[ds]]
                avg.append(_fmt(key, _mean(have)) if len(have) == len(datasets) else "–")
            rows.append(["average"] + avg)
        tables.append((METRIC_LABELS[key], ["dataset"] + modes, rows))
    detail_keys = ["n", "em", "f1", "cover_em", "valid_format", "answered", "searches", "invalid_rate",
                   "tokens_mean", "tokens_total", "seconds", "qps"]
    rows = []
    for ds in datasets:
        for mode in modes:
            if mode in metrics[ds]:
                rows.append([ds, mode] + [_fmt(k, metrics[ds][mode][k]) for k in detail_keys])
    tables.append(("all metrics", ["dataset", "mode"] + [METRIC_LABELS[k] for k in detail_keys], rows))
    return tables


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _is_number(text: str) -> bool:
    try:
        float(str(text).replace(",", ""))
        return True
    except ValueError:
        return text == "–"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; columns whose cells are all numbers are right-aligned."""
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """results.md: what was run, then the tables (datasets as rows, modes as columns)."""
    env = results.get("environment", {})
    ev = results.get("config", {}).get("eval", {})
    lines = ["# searchr1 eval", ""]
    facts = [("model", env.get("model")), ("retriever", env.get("retriever", {}).get("description")),
             ("decoding", env.get("decoding")), ("date", env.get("date")),
             ("questions per dataset", ev.get("limit") or "all")]
    lines += [f"- {k}: {v}" for k, v in facts if v not in (None, "")]
    if not results.get("complete", True):
        lines += ["", "**Incomplete: the run is still going or was interrupted.**"]
    for title, header, rows in metric_tables(results.get("metrics", {})):
        lines += ["", f"## {title}", "", markdown_table(header, rows)]
    lines += ["", "EM: exact match after SQuAD normalisation against any gold answer; cover-EM: a gold "
                  "answer occurs in the predicted answer; searches: mean searches per question; "
                  "average: macro average over datasets.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data and prompts


def dataset_label(name: str) -> str:
    """A file-name-safe label: a benchmark name as is, a file path by its stem."""
    base = Path(name).stem if (os.sep in name or "/" in name or "." in name) else name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or "dataset"


def load_datasets(ev) -> dict[str, tuple[dict, list[dict]]]:
    """label -> (info, rows) for every dataset of an `EvalConfig`; rows are
    {id, question, golden_answers, data_source}, info is {name, split, n}."""
    from searchr1.data.benchmarks import is_benchmark, load_benchmark, resolve_split

    out: dict[str, tuple[dict, list[dict]]] = {}
    for name in ev.datasets:
        rows = load_benchmark(name, ev.split, source=ev.source, data_dir=ev.data_dir or None, limit=ev.limit,
                              seed=ev.seed)
        if not rows:
            raise SearchR1Error(f"dataset {name!r} has no questions")
        label = dataset_label(str(rows[0].get("data_source") or name))
        while label in out:
            label += "_"
        split = resolve_split(name, ev.split) if is_benchmark(name) else "file"
        out[label] = ({"name": name, "split": split, "n": len(rows)}, list(rows))
    return out


def retrieve_documents(retriever, questions: Sequence[str], agent_cfg) -> tuple[list[list], float]:
    """Top-k hits for every question (batched, retried like the agent's searches), and the seconds."""
    from searchr1.rollout.agent import search_with_retries

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
    from searchr1.protocol import DIRECT_TEMPLATE, RAG_TEMPLATE, build_prompt, format_documents, get_template
    from searchr1.rollout.agent import new_trajectory

    chat = cfg.model.use_chat_template
    template = {"direct": DIRECT_TEMPLATE, "rag": RAG_TEMPLATE}.get(mode) or get_template(cfg.eval.agent_template)
    out = []
    for i, row in enumerate(rows):
        meta = {"dataset": label, "mode": mode, "data_source": row.get("data_source", label)}
        documents = ""
        if mode == "rag":
            documents = format_documents(hits[i])
            meta["doc_ids"] = [h.doc_id for h in hits[i]]
            meta["documents"] = documents
        prompt = build_prompt(row["question"], tokenizer, template=template, chat=chat, documents=documents)
        out.append(new_trajectory(tokenizer, prompt, row["question"], row["golden_answers"], id=str(row["id"]),
                                  group=i, meta=meta))
    return out


# ----------------------------------------------------------------------------- environment


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def environment(cfg, generator, retriever, model_name: str | None = None) -> dict:
    """What produced the numbers: model, device, retriever, decoding, date, library versions.
    `model_name` defaults to cfg.model.name (pass it when the generator did not come from there)."""
    import torch

    from searchr1 import __version__

    model = getattr(generator, "model", None)
    device = str(getattr(generator, "device", "")) or None
    dtype = None
    params = None
    if model is not None and hasattr(model, "parameters"):
        first = next(model.parameters(), None)
        dtype = str(first.dtype).replace("torch.", "") if first is not None else None
        params = sum(p.numel() for p in model.parameters())
    rcfg = cfg.retriever
    where = rcfg.url or rcfg.index
    method = getattr(retriever, "method", None) or (rcfg.method if retriever is not None else None)
    retr = {"index": rcfg.index, "url": rcfg.url, "method": method,
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
        from searchr1.eval.html import render_report

        page = render_report(results, {(r.dataset, r.mode): r.records() for r in runs}, max_per_run=html_max)
        write_text_atomic(out / "report.html", page)


# ----------------------------------------------------------------------------- the harness


class _Progress:
    """Batches done / total, with the live turn, on a rich console (silent without one)."""

    def __init__(self, console, total: int) -> None:
        self.bar = None
        if console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("batches"), TimeElapsedColumn(), console=console)
            self.task = self.bar.add_task("eval", total=total)
            self.bar.start()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_mode(cfg, generator, retriever, label: str, rows: Sequence[dict], mode: str,
             progress: _Progress | None = None) -> Run:
    """Play and score every question of one dataset in one mode."""
    from searchr1.rollout.agent import Agent
    from searchr1.rollout.generator import SamplingParams

    ev = cfg.eval
    run = Run(label, mode)
    hits, retrieve_s = None, 0.0
    if mode == "rag":
        hits, retrieve_s = retrieve_documents(retriever, [r["question"] for r in rows], cfg.agent)
    run.trajectories = build_trajectories(cfg, generator.tokenizer, label, rows, mode, hits)
    if mode == "agent":
        agent = Agent(generator, retriever, cfg.agent)
    else:
        agent = Agent(generator, None, dataclasses.replace(cfg.agent, max_turns=0))
    timing = {"retrieve_seconds": retrieve_s, "generate_seconds": 0.0, "agent_seconds": 0.0,
              "retrieval_calls": 1 if mode == "rag" else 0, "searches": 0}
    t0 = time.perf_counter()
    batches = math.ceil(len(rows) / ev.batch_size)
    for b in range(batches):
        batch = run.trajectories[b * ev.batch_size:(b + 1) * ev.batch_size]
        params = SamplingParams(temperature=ev.temperature, seed=ev.seed + b)
        on_turn: Callable[[int, int], None] | None = None
        if progress is not None:
            on_turn = lambda turn, live, b=b: progress.describe(  # noqa: E731
                f"{label}/{mode} batch {b + 1}/{batches} turn {turn} ({live} live)")
        stats = agent.run(batch, params, on_turn)
        timing["generate_seconds"] += stats.generate_seconds
        timing["retrieve_seconds"] += stats.retrieve_seconds
        timing["agent_seconds"] += stats.seconds
        timing["retrieval_calls"] += stats.retrieval_calls
        timing["searches"] += stats.searches
        if progress is not None:
            progress.advance()
    seconds = time.perf_counter() - t0 + retrieve_s
    run.scores = [score_trajectory(t) for t in run.trajectories]
    run.metrics = aggregate(run.trajectories, run.scores, seconds)
    run.timing = timing
    return run


def evaluate(cfg, console=None, generator=None, retriever=None) -> dict:
    """Run `cfg.eval` (datasets x modes) and write the reports; returns what results.json holds.

    `generator` / `retriever`: already-loaded ones to use (e.g. a trainer evaluating its policy);
    by default the model of `cfg.model` and the retriever of `cfg.retriever` are opened here.
    """
    ev = cfg.eval
    modes = list(ev.modes)
    data = load_datasets(ev)
    out = Path(ev.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_retriever = False
    if retriever is None and any(m in ("rag", "agent") for m in modes):
        from searchr1.retrieval.local import open_retriever

        try:
            retriever = open_retriever(cfg.retriever)
        except SearchR1Error as e:
            raise SearchR1Error(f"modes rag and agent need a retriever: {e} (or run eval.modes=direct)") from None
        own_retriever = True
    try:
        model_name = None
        if generator is not None:  # not cfg.model's: say what it is
            model_name = (getattr(getattr(getattr(generator, "model", None), "config", None), "_name_or_path", "")
                          or f"{type(getattr(generator, 'model', generator)).__name__} (given to evaluate)")
        else:
            from searchr1.rollout.hf import HFGenerator

            if console is not None:
                console.print(f"loading {cfg.model.name} ...", style="dim", markup=False)
            generator = HFGenerator.from_config(cfg.model)
        results = {
            "complete": False,
            "config": dataclasses.asdict(cfg),
            "environment": environment(cfg, generator, retriever, model_name),
            "datasets": {label: info for label, (info, _) in data.items()},
            "metrics": {label: {} for label in data},
            "timing": {label: {} for label in data},
            "files": {},
        }
        total = sum(math.ceil(len(rows) / ev.batch_size) for _, rows in data.values()) * len(modes)
        progress = _Progress(console, total)
        runs: list[Run] = []
        try:
            for label, (_, rows) in data.items():
                for mode in modes:
                    run = run_mode(cfg, generator, retriever, label, rows, mode, progress)
                    runs.append(run)
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
