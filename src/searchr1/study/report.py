"""study.json -> study.md and study.html (tables, paired tests, SVG curves under plots/)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from searchr1.atomic import write_text_atomic
from searchr1.eval.html import REPORT_CSS, esc, html_table
from searchr1.eval.metrics import markdown_table
from searchr1.eval.plots import line_plot_svg
from searchr1.study import paper
from searchr1.study.summary import ALL, AVERAGE

SCORE_NAMES = {"em": "EM (strict: answer tag required)", "em_lenient": "EM (lenient: the answer tag, else the "
               "first non-empty line)", "f1": "F1 (strict)", "cover_em": "cover EM (strict)",
               "f1_lenient": "F1 (lenient)", "cover_em_lenient": "cover EM (lenient)"}
CURVES = {"reward/mean": "training reward", "heldout/em": "held-out EM", "actor/kl": "KL to the reference",
          "actor/entropy": "entropy", "rollout/response_length": "response length (tokens)",
          "rollout/searches_per_traj": "searches per episode", "rollout/invalid_rate": "invalid-action rate"}


def _col_name(label: str) -> str:
    return paper.COLUMN_NAMES.get(label, label)


def _columns(summary: Mapping) -> list[str]:
    labels = list(summary["datasets"])
    return labels + ([AVERAGE] if len(labels) > 1 else [])


def _cell(entry: Mapping | None) -> str:
    if entry is None:
        return ""
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def score_table(summary: Mapping, key: str) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 2 layout: arms as rows, datasets (and their average) as columns; each cell
    the seed-averaged mean and its interval over questions; then the per-seed values of the last
    column. The paper's rows follow, for the paper's datasets only."""
    cols = _columns(summary)
    header = ["arm", *[_col_name(c) for c in cols], "per seed (last column)"]
    rows = []
    for a in summary["arms"].values():
        last = a["scores"][cols[-1]][key]
        seeds = " / ".join(f"{v:.3f}" for v in last["per_seed"]) if a["trained"] else "greedy, one run"
        rows.append([a["label"], *[_cell(a["scores"][c][key]) for c in cols], seeds])
    if key == "em" and summary["paper"]["rows"]:
        pcols = summary["paper"]["columns"]
        labels = [c for c in cols if c != AVERAGE]
        for name, row in summary["paper"]["rows"].items():
            cells = [f"{row[c]:.3f}" if c in pcols else "" for c in labels]
            if AVERAGE in cols:
                cells.append(f"{row['average']:.3f} (all 7)")
            rows.append([f"paper, Qwen2.5-3B: {name}", *cells, ""])
    return header, rows


def seed_table(summary: Mapping, key: str) -> tuple[list[str], list[list[str]]]:
    col = _columns(summary)[-1]
    header = ["arm", "seeds", f"mean over seeds ({_col_name(col)})", "std", "t interval over seeds", "min", "max",
              "generated tokens / run", "searches / run"]
    rows = []
    for a in summary["arms"].values():
        if not a["trained"]:
            continue
        s = a["scores"][col][key]["seed_interval"]
        interval = f"[{s['low']:.3f}, {s['high']:.3f}]" if s["low"] is not None else "(one seed)"
        budget = a.get("budget") or {}
        rows.append([a["label"], str(s["n"]), f"{s['mean']:.3f}", "" if s["std"] is None else f"{s['std']:.3f}",
                     interval, f"{s['min']:.3f}", f"{s['max']:.3f}",
                     *(f"{budget[k]['mean']:.0f}" if k in budget else "" for k in ("generated_tokens", "searches"))])
    return header, rows


def behaviour_table(summary: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "dataset", "searches / episode", "valid format", "answered", "train s", "eval s"]
    rows = []
    for a in summary["arms"].values():
        for label, b in a["behaviour"].items():
            rows.append([a["label"], _col_name(label), f"{b['num_searches']:.2f}", f"{b['valid_format']:.3f}",
                         f"{b['answered']:.3f}", f"{a['seconds']['train']:.0f}", f"{a['seconds']['eval']:.0f}"])
    return header, rows


def comparison_table(summary: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["A minus B", "dataset", "difference [interval]", "p (paired permutation)", "A better / worse / tie",
              "McNemar p per seed", "detectable (80% power)"]
    rows = []
    for c in summary["comparisons"]:
        arms = summary["arms"]
        mc = " ".join(f"{m['p_value']:.3g}" for m in c.get("mcnemar", []))
        rows.append([f"{arms[c['a']]['label']} - {arms[c['b']]['label']}",
                     "all questions" if c["dataset"] == ALL else _col_name(c["dataset"]),
                     f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]", f"{c['p_value']:.3g}",
                     f"{c['wins']} / {c['losses']} / {c['ties']}", mc,
                     "" if c.get("detectable") is None else f"{c['detectable']:.3f}"])
    return header, rows


def curve_svgs(summary: Mapping) -> dict[str, str]:
    """file name -> SVG: one plot per curve, a line per trained arm (mean over seeds) in a min-max band."""
    trained = {n: a for n, a in summary["arms"].items() if a["trained"]}
    out = {}
    for key, title in CURVES.items():
        series, bands = {}, {}
        for a in trained.values():
            points = a["curves"].get(key, [])
            if points:
                series[a["label"]] = [(p["step"], p["mean"]) for p in points]
                bands[a["label"]] = [(p["step"], p["min"], p["max"]) for p in points]
        if series:
            lo = 0.0 if key in ("reward/mean", "heldout/em", "rollout/invalid_rate") else None
            out[key.replace("/", "_") + ".svg"] = line_plot_svg(
                series, bands=bands, title=f"{title}: mean over seeds, band = min-max", xlabel="training step",
                ylabel=title, y_min=lo, y_max=1.0 if lo == 0.0 else None, width=760, height=320, legend_width=170)
    return out


def _settings_rows(summary: Mapping) -> list[list[str]]:
    rows = [[k, str(v)] for k, v in summary["settings"].items()]
    rows.append(["questions", ", ".join(f"{_col_name(k)} {v}" for k, v in summary["datasets"].items())])
    w = summary.get("warmup")
    if w and "steps" in w:
        rows.append(["warm-up", f"{w['steps']} steps on {w['kept']} synthetic demonstrations, loss "
                                f"{w['first_loss']:.3f} -> {w['last_loss']:.3f}"
                                + (f" ({w['model']})" if w.get("model") else "")])
    elif w:
        rows.append(["warm-up", f"given: {w.get('model')}"])
    rows.append(["wall time so far", f"{summary['seconds']:.0f} s"])
    return rows


def _sections(summary: Mapping):
    """(title, header, rows) of every table, in page order."""
    metric = summary["settings"]["metric"]
    yield "Settings", ["setting", "value"], _settings_rows(summary)
    yield f"{SCORE_NAMES['em']}, mean over seeds [95% interval over questions]", *score_table(summary, "em")
    yield SCORE_NAMES["em_lenient"], *score_table(summary, "em_lenient")
    for key in ("f1", "cover_em"):
        yield SCORE_NAMES[key], *score_table(summary, key)
    yield (f"Spread over training seeds ({SCORE_NAMES[metric]}); RL budget: sums over the steps, mean over seeds",
           *seed_table(summary, metric))
    yield f"Paired tests on the same questions ({SCORE_NAMES[metric]})", *comparison_table(summary)
    yield "Behaviour (means over seeds) and wall time per run", *behaviour_table(summary)


_NOTES = [
    "Intervals over questions: percentile bootstrap of the seed-averaged per-question score (the average column "
    "resamples within each dataset). The seed interval: Student's t over per-seed means. Paired tests: the "
    "per-question difference of seed averages, bootstrap interval and a sign-flip permutation test; McNemar: "
    "exact, on each seed's binary EM (an untrained arm's one run pairs with every seed). Detectable: the smallest "
    "true difference these questions would find with 80% power, given the observed spread (normal approximation).",
    "Direct and RAG run the base model; the warm-up and every trained arm play the Search-R1 template as an "
    "agent (R1: the r1 template, no search). All arms are scored by the same rules; the training reward is "
    "the strict one.",
]


def _notes(summary: Mapping) -> list[str]:
    """The page's notes, then one line per arm that ran with settings of its own."""
    own = [f"Not like-for-like: {a['label']} ran with its own settings {', '.join(a['overrides'])} "
           "(study.arm_settings)." for a in summary["arms"].values() if a.get("overrides")]
    return _NOTES + own


def markdown(summary: Mapping, plot_files: list[str]) -> str:
    status = "complete" if summary["complete"] else "PARTIAL: units still to run"
    parts = [f"# searchr1 study: {status}", ""] + [f"- {n}" for n in _notes(summary)] + [""]
    for title, header, rows in _sections(summary):
        parts += [f"## {title}", "", markdown_table(header, rows), ""]
    if summary["paper"]["rows"]:
        parts += [f"Paper rows: {summary['paper']['source']}.", ""]
    parts += ["## Curves", ""] + [f"![{name}](plots/{name})" for name in plot_files] + [""]
    return "\n".join(parts)


def html(summary: Mapping, plot_files: list[str]) -> str:
    status = "complete" if summary["complete"] else "PARTIAL: units still to run"
    body = [f"<h1>searchr1 study: {esc(status)}</h1>",
            "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in _notes(summary)) + "</ul>"]
    for title, header, rows in _sections(summary):
        body += [f"<h2>{esc(title)}</h2>", html_table(header, rows)]
    body.append("<h2>Curves</h2>")
    body += [f'<p><img src="plots/{esc(name)}" alt="{esc(name)}"></p>' for name in plot_files]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>searchr1 study</title><style>{REPORT_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def write_report(root: Path, summary: Mapping) -> dict[str, Path]:
    """study.json, study.md, study.html and plots/*.svg under `root` (each written atomically)."""
    root = Path(root)
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    svgs = curve_svgs(summary)
    for name, svg in svgs.items():
        write_text_atomic(plots / name, svg)
    paths = {"json": root / "study.json", "md": root / "study.md", "html": root / "study.html"}
    write_text_atomic(paths["json"], json.dumps(summary, indent=1))
    write_text_atomic(paths["md"], markdown(summary, list(svgs)))
    write_text_atomic(paths["html"], html(summary, list(svgs)))
    return paths
