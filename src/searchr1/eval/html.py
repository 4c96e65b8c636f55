"""report.html: the metric tables and every episode, in one self-contained page.

No scripts, no external assets: inline CSS and `<details>` for what is folded. Every piece of
text that came from a model, a dataset or a corpus goes through `html.escape`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from searchr1.eval.metrics import is_number, metric_tables

#: The style sheet of every searchr1 report page (eval, demo, study): inline, so a page is one file.
REPORT_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #1d1f21; background: #fff; }
h1, h2, h3 { line-height: 1.2; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #d0d4d9; padding: .25em .6em; }
th { background: #f2f4f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.facts { color: #555; }
.note { color: #6a5d00; background: #fff8d6; padding: .3em .6em; border-radius: 4px; display: inline-block; }
.episode { border: 1px solid #d0d4d9; border-radius: 6px; padding: .6em 1em; margin: .8em 0; }
.episode.em1 { border-left: 6px solid #2e9d4c; }
.episode.em0 { border-left: 6px solid #d0393e; }
.q { font-weight: 600; }
.gold { color: #555; }
.turn { margin: .4em 0; }
.turn-head { color: #888; font-size: .85em; }
pre.text { white-space: pre-wrap; word-wrap: break-word; margin: .2em 0; padding: .4em .6em;
           background: #fafbfc; border-radius: 4px; font: 13px/1.45 ui-monospace, Menlo, Consolas, monospace; }
.think { color: #8a9099; }
.search { background: #dff1fb; color: #0b5c8a; font-weight: 600; border-radius: 3px; }
.tag-answer { background: #eef0f2; font-weight: 600; border-radius: 3px; }
.good { background: #dcf5e2; color: #17692f; font-weight: 600; border-radius: 3px; padding: 0 .2em; }
.bad { background: #fbe0e1; color: #9b1c21; font-weight: 600; border-radius: 3px; padding: 0 .2em; }
.invalid { color: #a15c00; }
details > summary { cursor: pointer; color: #0b5c8a; }
details pre.text { background: #f6f8fa; color: #444; }
.meta { color: #777; font-size: .85em; }
nav a { margin-right: 1em; }
"""

_SEGMENT = re.compile(r"(<think>.*?(?:</think>|$)|<search>.*?(?:</search>|$)|<answer>.*?(?:</answer>|$))", re.S)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def render_model_text(text: str, em: float | None = None) -> str:
    """The policy's text, escaped, with <think> dimmed, <search> highlighted and <answer> coloured
    by correctness (green when EM = 1, red otherwise, grey when unknown)."""
    out = []
    for part in _SEGMENT.split(text):
        if not part:
            continue
        if part.startswith("<think>"):
            out.append(f'<span class="think">{esc(part)}</span>')
        elif part.startswith("<search>"):
            out.append(f'<span class="search">{esc(part)}</span>')
        elif part.startswith("<answer>"):
            cls = "tag-answer" if em is None else ("good" if em >= 1 else "bad")
            out.append(f'<span class="{cls}">{esc(part)}</span>')
        else:
            out.append(esc(part))
    return "".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of string cells, escaped; cells that read as numbers are right-aligned (td.num)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if is_number(c) else f"<td>{esc(c)}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _anchor(dataset: str, mode: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{dataset}-{mode}")


def render_episode(record: Mapping, index: int) -> str:
    """One trajectory record (`Trajectory.to_dict(with_ids=False)` + `scores`)."""
    scores = record.get("scores") or {}
    em = scores.get("em")
    answer = scores.get("answer", record.get("answer"))
    cls = "em1" if em is not None and em >= 1 else "em0"
    parts = [f'<div class="episode {cls}">',
             f'<div class="q">{index}. {esc(record.get("question", ""))}</div>',
             f'<div class="gold">gold: {esc(" | ".join(map(str, record.get("golden_answers", []))))}</div>']
    meta = record.get("meta") or {}
    if meta.get("documents"):
        parts.append(f'<details><summary>passages in the prompt ({len(meta.get("doc_ids", []))}: '
                     f'{esc(", ".join(map(str, meta.get("doc_ids", []))))})</summary>'
                     f'<pre class="text">{esc(meta["documents"])}</pre></details>')
    if record.get("prompt_text"):
        parts.append('<details><summary>prompt</summary>'
                     f'<pre class="text">{esc(record["prompt_text"])}</pre></details>')
    for t, turn in enumerate(record.get("turns", []), start=1):
        action = turn.get("action", "")
        head = f"turn {t}: {action}"
        if action == "search":
            head += f" &middot; query <span class=\"search\">{esc(turn.get('content', ''))}</span>"
        head += f" &middot; {int(turn.get('generated_tokens', 0))} tokens &middot; {esc(turn.get('finish', ''))}"
        parts.append(f'<div class="turn"><div class="turn-head">{head}</div>'
                     f'<pre class="text">{render_model_text(turn.get("text", ""), em)}</pre>')
        obs = turn.get("observation", "")
        if obs and action == "search":
            ids = ", ".join(map(str, turn.get("doc_ids", [])))
            parts.append(f'<details><summary>retrieved passages ({len(turn.get("doc_ids", []))}: {esc(ids)})</summary>'
                         f'<pre class="text">{esc(obs.strip())}</pre></details>')
        elif obs:
            parts.append(f'<pre class="text invalid">{esc(obs.strip())}</pre>')
        parts.append("</div>")
    shown = "(none)" if answer is None else answer
    verdict = "good" if cls == "em1" else "bad"
    facts = [f"stop reason: {esc(record.get('stop_reason'))}",
             f"searches: {int(record.get('num_searches', 0))}"]
    if "f1" in scores:
        facts.append(f"F1 {float(scores['f1']):.2f}")
    if "cover_em" in scores:
        facts.append(f"cover-EM {float(scores['cover_em']):.0f}")
    if record.get("id"):
        facts.append(f"id {esc(record['id'])}")
    facts.insert(0, f"EM {esc(em if em is not None else '?')}")
    parts.append(f'<div>answer: <span class="{verdict}">{esc(shown)}</span> '
                 f'<span class="meta">{" &middot; ".join(facts)}</span></div>')
    parts.append("</div>")
    return "\n".join(parts)


def render_report(results: Mapping, runs: Mapping[tuple[str, str], Sequence[Mapping]], max_per_run: int = 50,
                  title: str = "searchr1 eval") -> str:
    """The whole page. `runs[(dataset, mode)]` are trajectory records; at most `max_per_run` of each
    are shown (0 = all), with a note when some are left out."""
    env = results.get("environment", {}) or {}
    body = [f"<h1>{esc(title)}</h1>"]
    facts = [("model", env.get("model")), ("device", env.get("gpu") or env.get("device")),
             ("retriever", (env.get("retriever") or {}).get("description")), ("decoding", env.get("decoding")),
             ("date", env.get("date"))]
    body.append('<p class="facts">' + "<br>".join(f"{esc(k)}: {esc(v)}" for k, v in facts if v) + "</p>")
    if not results.get("complete", True):
        body.append('<p class="note">Incomplete run: these are the results so far.</p>')
    for table_title, header, rows in metric_tables(results.get("metrics", {})):
        body.append(f"<h2>{esc(table_title)}</h2>{html_table(header, rows)}")
    if runs:
        body.append("<h2>episodes</h2><nav>" + "".join(
            f'<a href="#{_anchor(ds, mode)}">{esc(ds)} / {esc(mode)}</a>' for ds, mode in runs) + "</nav>")
    for (ds, mode), records in runs.items():
        body.append(f'<h3 id="{_anchor(ds, mode)}">{esc(ds)} / {esc(mode)}</h3>')
        shown = list(records) if not max_per_run else list(records)[:max_per_run]
        if len(shown) < len(records):
            body.append(f'<p class="note">Showing the first {len(shown)} of {len(records)} episodes '
                        f'(eval.html_max_per_run); all are in trajectories.{esc(ds)}.{esc(mode)}.jsonl.</p>')
        body += [render_episode(r, i) for i, r in enumerate(shown, start=1)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{REPORT_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
