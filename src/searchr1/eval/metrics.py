"""Metrics of scored episodes and the tables that report them (Markdown here, HTML in `html`).

`aggregate` turns trajectories into the numbers of results.json; the trainer's rollout metrics
use it too, so training curves and eval tables mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from searchr1.eval.settings import MODES
from searchr1.rewards import score_breakdown
from searchr1.rollout.trajectory import Trajectory

# The lenient rule's scores (`rewards.lenient_answer`), beside the strict em / f1 / cover_em.
LENIENT_KEYS = ("em_lenient", "f1_lenient", "cover_em_lenient")
# Metric keys of `aggregate`, in report order, with the label the tables use.
METRIC_LABELS = {
    "n": "questions",
    "em": "EM",
    "f1": "F1",
    "cover_em": "cover-EM",
    "em_lenient": "EM (lenient)",
    "f1_lenient": "F1 (lenient)",
    "cover_em_lenient": "cover-EM (lenient)",
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


# ----------------------------------------------------------------------------- scoring


def score_trajectory(traj: Trajectory) -> dict:
    """`score_breakdown` of the response (answer, em, f1, cover_em, valid_format), by its protocol."""
    return dict(score_breakdown(traj.response_text, traj.golden_answers, traj.meta.get("protocol", "tags")))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def aggregate(trajectories: Sequence[Trajectory], scores: Sequence[dict] | None = None,
              seconds: float = 0.0) -> dict:
    """Metrics of a set of scored episodes (scores computed here when not given).

    em, f1, cover_em, valid_format: means over questions (0..1), under the strict rule (Search-R1's:
    the answer tag is required); em_lenient, f1_lenient, cover_em_lenient: the same under the lenient
    rule (`rewards.lenient_answer`: the tag if present, else the response's first line). answered: share of episodes that
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
        **{k: _mean([float(s.get(k, 0.0)) for s in scores]) for k in LENIENT_KEYS},
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
    keys = ("em", "f1", "cover_em", *LENIENT_KEYS, "valid_format", "answered", "searches", "invalid_rate", "turns",
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
    for key in ("em", "em_lenient", "f1", "cover_em", "searches"):
        rows = [[ds] + [_fmt(key, metrics[ds].get(mode, {}).get(key)) for mode in modes] for ds in datasets]
        if len(datasets) > 1:
            avg = []
            for mode in modes:
                have = [metrics[ds][mode][key] for ds in datasets if mode in metrics[ds]]
                avg.append(_fmt(key, _mean(have)) if len(have) == len(datasets) else "–")
            rows.append(["average"] + avg)
        tables.append((METRIC_LABELS[key], ["dataset"] + modes, rows))
    detail_keys = ["n", "em", "f1", "cover_em", *LENIENT_KEYS, "valid_format", "answered", "searches", "invalid_rate",
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


def is_number(text: str) -> bool:
    """A table cell that holds a number (thousands commas allowed) or the missing-value dash."""
    try:
        float(str(text).replace(",", ""))
        return True
    except ValueError:
        return text == "–"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; columns whose cells are all numbers are right-aligned."""
    numeric = [bool(rows) and all(is_number(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """results.md: what was run, then the tables (datasets as rows, modes as columns)."""
    env = results.get("environment", {})
    ev = results.get("config", {}).get("eval", {})
    lines = ["# searchr1 eval", ""]
    # eval.limit cuts only the datasets evaluate reads itself, not rows a caller passed in memory
    given = any(info.get("split") == "in memory" for info in results.get("datasets", {}).values())
    facts = [("model", env.get("model")), ("retriever", env.get("retriever", {}).get("description")),
             ("decoding", env.get("decoding")), ("date", env.get("date")),
             ("questions per dataset", "as given" if given else ev.get("limit") or "all"),
             ("search", ", ".join(f"{k.removeprefix('search/')} {v:g}"
                                  for k, v in results.get("retriever_metrics", {}).get("total", {}).items()))]
    lines += [f"- {k}: {v}" for k, v in facts if v not in (None, "")]
    if not results.get("complete", True):
        lines += ["", "**Incomplete: the run is still going or was interrupted.**"]
    for title, header, rows in metric_tables(results.get("metrics", {})):
        lines += ["", f"## {title}", "", markdown_table(header, rows)]
    lines += ["", "EM: exact match after SQuAD normalisation against any gold answer; cover-EM: a gold "
                  "answer occurs in the predicted answer; searches: mean searches per question; "
                  "average: macro average over datasets. Two answer rules, the same for every mode: "
                  "strict (EM, F1, cover-EM; Search-R1's and the training reward's) reads only the last "
                  "<answer> span, so a response without one scores 0; lenient (the '(lenient)' columns; "
                  "FlashRAG-style, as the paper's direct and RAG rows were scored) reads the <answer> span "
                  "if there is one, else the response's first non-empty line.", ""]
    return "\n".join(lines)
