"""`searchr1 demo`: the built-in end-to-end run on a synthetic world, no downloads needed.

Six stages, each printed with its time (README gives the measured times of the cpu-demo preset):

  1. the synthetic encyclopedia and its questions, BM25 and dense indexes, served over HTTP on
     127.0.0.1, answer recall of each retriever in process and through the HTTP client (must agree);
     `demo.retrieval_only=true` stops here
  2. the policy model (default SmolLM2-135M-Instruct) evaluated as a search agent on held-out questions
  3. optional supervised warm-up on search demonstrations (`sft.steps > 0`; said loudly, and
     evaluated separately when `demo.eval_after_sft`)
  4. RL with search on the world's training questions (`train.algorithm`: the preset's Tree-GRPO over
     tree rollouts, or GRPO, PPO, ...)
  5. the trained policy evaluated on the same held-out questions (the trainer's own evaluation of
     the last step when `demo.eval_every` divides the steps; it also evaluated mid-way, for the curve)
  6. `{demo.dir}/report.md` and `report.html`: settings, the before/after table, what the warm-up
     and what RL changed (paired on the same questions: mean, 95% interval, gained / lost,
     McNemar), held-out EM over RL steps, the training curves (inline SVG), example trajectories;
     `report.json` holds the numbers

Stages 2-5 are the steps of `searchr1.pipeline`, which the study runs too; every evaluation
generates with the engine `rollout.backend` names, and on ours in the training precision
(`train.compute.precision`, `training_precision`): the trainer's own evaluations during RL run under
it, so the evaluations the report pairs (before, after the warm-up, after RL) decode alike.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from searchr1.data.questions import held_out_questions
from searchr1.data.synthetic import Question
from searchr1.data.world import prepare_world
from searchr1.eval.harness import read_trajectories
from searchr1.eval.html import REPORT_CSS, esc, html_table, render_episode
from searchr1.eval.metrics import markdown_table
from searchr1.eval.plots import line_plot_svg
from searchr1.pipeline import evaluate_policy, index_world, load_policy, retriever_config, train_policy, warm_up
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.evaluate import answer_recall
from searchr1.retrieval.local import open_index, open_retriever
from searchr1.retrieval.server import BackgroundServer
from searchr1.settings import Config


def retrieval_check(cfg: Config, console) -> dict:
    """Stage 1: world -> corpus -> BM25 + dense indexes -> answer recall in process and over HTTP."""
    t0 = time.perf_counter()
    corpus, train, test = prepare_world(cfg.world, Path(cfg.demo.dir) / "data")
    console.print(f"[bold]1/6[/] synthetic world: {corpus} ({sum(1 for _ in open(corpus))} passages), "
                  f"{len(train)} train / {len(test)} test questions")

    index_dir = Path(cfg.demo.dir) / "index"
    meta = index_world(cfg, corpus, index_dir, cfg.demo.methods, progress=True)
    console.print(f"[bold]1/6[/] index {index_dir}: {meta['num_docs']} passages, methods {sorted(meta['methods'])}")

    questions = test[: cfg.demo.max_questions]
    texts = [q.question for q in questions]
    answers = [q.golden_answers for q in questions]
    methods = list(cfg.demo.methods) + (["hybrid"] if {"bm25", "dense"} <= set(cfg.demo.methods) else [])
    rows = []
    for method in methods:
        retriever = open_index(retriever_config(cfg, index_dir, method))
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
        "passages": meta["num_docs"],
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

    table = Table(title=f"[bold]1/6[/] answer recall on {report['questions']} held-out synthetic questions")
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


# ============================================================================ the full demo


# The before / after rows of the report: (label, key of the eval metrics).
COMPARE = [("EM", "em"), ("F1", "f1"), ("searches / question", "searches"), ("invalid-action rate", "invalid_rate"),
           ("answered share", "answered")]


def _stage(console, timings: dict, key: str, title: str):
    """A context manager that prints the stage's title and, at the end, its seconds."""
    import contextlib

    @contextlib.contextmanager
    def run():
        console.print(f"\n[bold]{title}[/]")
        t0 = time.perf_counter()
        yield
        timings[key] = time.perf_counter() - t0
        console.print(f"[dim]{title.split(':')[0]} done in {timings[key]:.1f} s[/]")

    return run()


def _on_synthetic(tc):
    """`tc` training on the synthetic world's questions."""
    return dataclasses.replace(tc, questions=dataclasses.replace(tc.questions, datasets=["synthetic"]))


def _held_out_eval(cfg: Config, out_dir: Path):
    """`cfg.eval` as the demo evaluates: the agent on demo.eval_questions held-out questions."""
    return dataclasses.replace(cfg.eval, limit=cfg.demo.eval_questions, modes=["agent"], out_dir=str(out_dir))


def evaluate_held_out(cfg: Config, rcfg, out_dir: Path, console, retriever, policy: tuple | None = None) -> dict:
    """The agent (`policy`, else `cfg.model`, on `rollout.backend`) on demo.eval_questions of the
    world's held-out questions (the ones training leaves out)."""
    ecfg = dataclasses.replace(cfg, eval=_held_out_eval(cfg, out_dir), retriever=rcfg, train=_on_synthetic(cfg.train))
    return evaluate_policy(ecfg, console, retriever, held_out_questions(ecfg), policy)


def training_precision(cfg: Config, policy: tuple | None):
    """The autocast the trainer's own evaluations during RL run under (`train.compute.precision`,
    `resolve_precision`), for our engine playing `policy`: every evaluation the demo pairs (before,
    after the warm-up, during and after RL) then decodes in the same precision. A no-op for vLLM,
    which keeps its own, and in fp32."""
    import contextlib

    import torch

    from searchr1.train.models import resolve_precision

    if policy is None or cfg.rollout.backend != "engine":
        return contextlib.nullcontext()
    device = next(policy[0].parameters()).device
    _, autocast = resolve_precision(cfg.train.compute.precision, str(device))
    return torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()


def evaluate_as_trained(cfg: Config, rcfg, out_dir: Path, console, retriever, policy: tuple | None) -> dict:
    """`evaluate_held_out` in the training precision (`training_precision`), as the demo evaluates."""
    with training_precision(cfg, policy):
        return evaluate_held_out(cfg, rcfg, out_dir, console, retriever, policy)


def _agent_metrics(results: dict) -> tuple[dict, Path]:
    label = next(iter(results["metrics"]))
    return results["metrics"][label]["agent"], Path(results["config"]["eval"]["out_dir"]) / results["files"][f"{label}/agent"]


def per_question_em(results: dict) -> dict[str, float]:
    """Question id -> EM of one held-out evaluation (its trajectories file)."""
    return {r["id"]: float(r["scores"]["em"]) for r in read_trajectories(_agent_metrics(results)[1])}


def by_question_kind(results: dict) -> dict[str, dict]:
    """Question kind (the synthetic world's question id without its number: birthplace, founder,
    birth-river, ...) -> {n, em, searches} of one held-out evaluation: which kinds RL won or gave up."""
    acc: dict[str, dict] = {}
    for r in read_trajectories(_agent_metrics(results)[1]):
        a = acc.setdefault(r["id"].rsplit("-", 1)[0], {"n": 0, "em": 0.0, "searches": 0.0})
        a["n"] += 1
        a["em"] += r["scores"]["em"]
        a["searches"] += r["num_searches"]
    return {k: {"n": a["n"], "em": a["em"] / a["n"], "searches": a["searches"] / a["n"]} for k, a in sorted(acc.items())}


def paired_gain(after: dict, before: dict) -> dict:
    """EM of `after` minus `before` on the same held-out questions: the mean difference, its 95%
    bootstrap interval and permutation p-value (`searchr1.study.stats.paired_difference`), and the
    exact McNemar test (questions gained and lost)."""
    from searchr1.study.stats import mcnemar, paired_difference

    a, b = per_question_em(after), per_question_em(before)
    if set(a) != set(b):
        raise ValueError("the two evaluations asked different questions; a paired comparison needs the same ones")
    ids = sorted(a)
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    test = mcnemar(x, y)
    return paired_difference(x, y) | {"gained": test["a_only"], "lost": test["b_only"], "mcnemar_p": test["p_value"]}


def load_eval(out_dir: str | Path) -> dict:
    """The results of an evaluation, read back from its directory (results.json); its files are
    found where the directory is now, not where it was written (run directories get moved)."""
    results = json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
    results["config"]["eval"]["out_dir"] = str(out_dir)
    return results


def _trainer_evals(run_dir: Path) -> dict[int, dict]:
    """step -> the results of the held-out evaluations the trainer ran (train.eval_every)."""
    return {int(path.parent.name.split("_")[1]): load_eval(path.parent)
            for path in sorted((run_dir / "eval").glob("step_*/results.json"))}


def held_out_curve(start: tuple[int, dict], during: dict[int, dict], end: tuple[int, dict]) -> list[dict]:
    """Held-out EM over RL steps, each point paired against the start (step 0: RL's starting policy)."""
    points = {start[0]: start[1], **during, end[0]: end[1]}
    rows = []
    for step in sorted(points):
        gain = paired_gain(points[step], start[1])
        rows.append({"step": step, "em": _agent_metrics(points[step])[0]["em"], "gain": gain["mean"],
                     "low": gain["low"], "high": gain["high"]})
    return rows


def run_demo(cfg: Config, console) -> dict:
    """Retrieval check, then (unless demo.retrieval_only) eval -> [SFT warm-up] -> RL -> eval -> report."""
    import torch

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(cfg.demo.dir)
    with _stage(console, timings, "retrieval", "stage 1/6: synthetic world, indexes, retrieval recall"):
        retrieval = retrieval_check(cfg, console)
    if cfg.demo.retrieval_only:
        return {"retrieval": retrieval, "timings": timings}

    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    _, train_questions, _ = prepare_world(cfg.world, out / "data")
    rcfg = retriever_config(cfg, out / "index")
    retriever = open_retriever(rcfg)
    evals: dict[str, dict] = {}
    sft_result: dict | None = None
    try:
        with _stage(console, timings, "eval_before",
                    f"stage 2/6: evaluate {cfg.model.name} before training ({cfg.demo.eval_questions} held-out "
                    "questions, agent mode)"):
            # the warm-up trains a policy in memory, and our engine evaluates it in the training
            # precision; vLLM without a warm-up loads cfg.model itself
            policy = load_policy(cfg) if cfg.sft.steps > 0 or cfg.rollout.backend == "engine" else None
            evals["before"] = evaluate_as_trained(cfg, rcfg, out / "eval-before", console, retriever, policy)
        rl_model = cfg.model.name
        if cfg.sft.steps > 0:
            with _stage(console, timings, "sft", f"stage 3/6: SUPERVISED WARM-UP on demonstrations "
                                                 f"({cfg.sft.steps} steps) -- not pure RL, the report says so"):
                sft_dir = out / "sft-model"
                sft_result = warm_up(cfg, policy, retriever, train_questions, sft_dir, console)
                rl_model = str(sft_dir)
                console.print(f"warm-up: {sft_result['kept']} demonstrations kept ({sft_result['dropped']} dropped), "
                              f"loss {sft_result['first_loss']} -> {sft_result['last_loss']}; model {sft_dir}",
                              markup=False)
            if cfg.demo.eval_after_sft:
                with _stage(console, timings, "eval_after_sft", "stage 3/6: evaluate after the warm-up"):
                    evals["after_sft"] = evaluate_as_trained(cfg, rcfg, out / "eval-after-sft", console, retriever,
                                                             policy)
        else:
            console.print("\n[bold]stage 3/6: no supervised warm-up[/] (sft.steps=0): pure RL from the model")
        del policy
        run_dir = out / "train"
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always trains from scratch
        # demo.eval_every: the trainer evaluates the same held-out questions during RL, for the curve
        tcfg = dataclasses.replace(
            cfg, retriever=rcfg, model=dataclasses.replace(cfg.model, name=rl_model),
            eval=_held_out_eval(cfg, run_dir / "eval"),
            train=dataclasses.replace(_on_synthetic(cfg.train), run_dir=str(run_dir), resume=False,
                                      eval_every=cfg.demo.eval_every))
        with _stage(console, timings, "train", f"stage 4/6: {cfg.train.algorithm.upper()} with search, "
                                               f"{cfg.train.steps} steps x {cfg.train.prompts_per_step} questions x "
                                               f"{cfg.train.group_size} rollouts"):
            result, trained = train_policy(tcfg, retriever, console)
        during = _trainer_evals(run_dir)
        with _stage(console, timings, "eval_after", "stage 5/6: evaluate after training"):
            if cfg.train.steps in during:  # the trainer evaluated the last step: the same policy, questions, engine
                evals["after"] = during.pop(cfg.train.steps)
                console.print(f"the trainer's held-out evaluation of step {cfg.train.steps} is the after-RL one")
            else:
                evals["after"] = evaluate_as_trained(cfg, rcfg, out / "eval-after", console, retriever, trained)
    finally:
        getattr(retriever, "close", lambda: None)()
    with _stage(console, timings, "report", "stage 6/6: report"):
        from searchr1.train.metrics_log import read_metrics

        curves = read_metrics(run_dir)
        timings["total"] = time.perf_counter() - t_all
        report = build_report(cfg, rl_model, evals, sft_result, curves, retrieval, timings, result, during)
        paths = write_report(out, report, evals)
    print_comparison(console, report)
    console.print(f"report: {paths['md']}  {paths['html']}  ({timings['total']:.0f} s in all)", markup=False)
    return report


def build_report(cfg: Config, rl_model: str, evals: dict, sft_result: dict | None, curves: list[dict],
                 retrieval: dict, timings: dict, train_result: dict, during: dict[int, dict] | None = None) -> dict:
    """report.json: settings, the evaluations, what the warm-up and what RL changed (paired on the
    held-out questions), the training and held-out curves, timings."""
    tc = cfg.train
    start = "after_sft" if "after_sft" in evals else "before"
    # without an evaluation between them, the change from `before` is the warm-up's and RL's together
    rl_key = "warm_up_and_rl" if start == "before" and sft_result and sft_result["steps"] else "rl"
    gains = {rl_key: paired_gain(evals["after"], evals[start]) | {"from": start}}
    if "after_sft" in evals:
        gains["warm_up"] = paired_gain(evals["after_sft"], evals["before"]) | {"from": "before"}
    settings = {
        "model": cfg.model.name,
        "RL started from": rl_model,
        "algorithm": tc.algorithm,
        "train steps": tc.steps,
        "questions per step": tc.prompts_per_step,
        "group size": tc.group_size,
        "learning rate": tc.optim.lr,
        "fine-tuning": f"LoRA r={tc.lora.r}" if tc.lora.r else "full",
        "KL coefficient": tc.kl.coef,
        "supervised warm-up": (f"yes: {sft_result['steps']} steps on {sft_result['kept']} demonstrations"
                               if sft_result and sft_result["steps"] else "no"),
        "retriever": f"{cfg.retriever.method} top-{cfg.agent.topk}",
        "max searches / turn tokens": f"{cfg.agent.max_turns} / {cfg.agent.max_turn_tokens}",
        "world": f"{retrieval.get('passages', '?')} passages, seed {cfg.world.seed}",
        "rollout temperature": tc.sampling.temperature,
        "held-out questions": cfg.demo.eval_questions,
    }
    metrics = {name: _agent_metrics(res)[0] for name, res in evals.items()}
    return {
        "settings": settings,
        "sft_used": bool(sft_result and sft_result["steps"]),
        "sft": sft_result,
        "eval": {name: {k: m[k] for _, k in COMPARE} | {"n": m["n"]} for name, m in metrics.items()},
        "curves": [{"step": r["step"], "reward": r.get("reward/mean"), "em": r.get("reward/em")}
                   for r in curves if "reward/mean" in r],
        "gains": gains,
        "eval_dirs": {name: res["config"]["eval"]["out_dir"] for name, res in evals.items()},
        "held_out_curve": held_out_curve((0, evals[start]), during or {}, (tc.steps, evals["after"])),
        "train_checkpoint": train_result.get("checkpoint"),
        "retrieval": retrieval.get("rows"),
        "examples": cfg.demo.examples,
        "timings": timings,
    }


_COLUMN = {"before": "before", "after_sft": "after warm-up", "after": "after RL"}


def comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    names = [n for n in ("before", "after_sft", "after") if n in report["eval"]]
    header = ["metric"] + [_COLUMN[n] for n in names]
    rows = [[label] + [f"{report['eval'][n][key]:.3f}" for n in names] for label, key in COMPARE]
    return header, rows


def print_comparison(console, report: dict) -> None:
    from rich.table import Table

    header, rows = comparison_rows(report)
    n = next(iter(report["eval"].values()))["n"]
    table = Table(title=f"agent on {n} held-out synthetic questions", title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("supervised warm-up: " + ("YES (the gain is warm-up + RL, not RL alone)" if report["sft_used"]
                                            else "no (pure RL)"))
    for line in gain_lines(report):
        console.print(line, markup=False)


_GAIN_NAME = {"rl": "RL", "warm_up": "warm-up", "warm_up_and_rl": "warm-up + RL"}


def gain_lines(report: dict) -> list[str]:
    """One line per stage: its paired EM change on the held-out questions, with interval and tests."""
    lines = []
    for key, g in report.get("gains", {}).items():
        verdict = "shown" if g["low"] > 0 else ("a loss" if g["high"] < 0 else "not shown (the interval holds 0)")
        lines.append(f"{_GAIN_NAME[key]} gain (EM, paired against {_COLUMN[g['from']]}): {g['mean']:+.3f} "
                     f"[{g['low']:+.3f}, {g['high']:+.3f}] 95% bootstrap, {g['gained']} questions gained / "
                     f"{g['lost']} lost, McNemar p {g['mcnemar_p']:.3g}: {verdict}")
    return lines


def _curve_svgs(report: dict) -> list[str]:
    c = report["curves"]
    svgs = [line_plot_svg({"reward (mean)": [(r["step"], r["reward"]) for r in c],
                           "exact match": [(r["step"], r["em"]) for r in c]},
                          title=f"{report['settings']['algorithm'].upper()} training rollouts",
                          xlabel="training step", ylabel="mean over the step's rollouts", y_min=0.0, y_max=1.0)]
    held = report.get("held_out_curve", [])
    if len(held) > 2:
        svgs.append(line_plot_svg({"held-out EM": [(r["step"], r["em"]) for r in held],
                                   "95% low": [(r["step"], report_start_em(report) + r["low"]) for r in held],
                                   "95% high": [(r["step"], report_start_em(report) + r["high"]) for r in held]},
                                  title="held-out EM over RL steps (band: paired interval against step 0)",
                                  xlabel="training step", ylabel="exact match", y_min=0.0, y_max=1.0))
    if report["sft_used"]:
        losses = report["sft"]["losses"]
        svgs.append(line_plot_svg({"masked NLL": list(enumerate(losses, start=1))}, title="supervised warm-up",
                                  xlabel="warm-up step", ylabel="loss (policy tokens)", y_min=0.0))
    return svgs


def report_start_em(report: dict) -> float:
    """Held-out EM of RL's starting policy (step 0 of the held-out curve)."""
    return report["held_out_curve"][0]["em"]


def _held_out_rows(report: dict) -> list[list[str]]:
    return [[str(r["step"]), f"{r['em']:.3f}", f"{r['gain']:+.3f}", f"[{r['low']:+.3f}, {r['high']:+.3f}]"]
            for r in report.get("held_out_curve", [])]


_HELD_OUT_HEADER = ["RL step", "held-out EM", "change from step 0", "95% interval"]


def write_report(out: Path, report: dict, evals: dict) -> dict:
    """report.md, report.html (inline SVG curves, example trajectories), training_curves.svg, report.json."""
    header, rows = comparison_rows(report)
    svgs = _curve_svgs(report)
    (out / "training_curves.svg").write_text(svgs[0] + "\n", encoding="utf-8")
    _, traj_path = _agent_metrics(evals["after"])
    examples = read_trajectories(traj_path)[:report_examples(report)]
    warm = ("**Supervised warm-up: YES** — the model first imitated ideal search episodes, so the change "
            "from *before* is warm-up plus RL, not RL alone." if report["sft_used"] else
            "Supervised warm-up: no — the change from *before* is RL alone.")
    n = next(iter(report["eval"].values()))["n"]
    md = ["# searchr1 demo", "", warm, "", "## settings", ""]
    md += [f"- {k}: {v}" for k, v in report["settings"].items()]
    md += ["", f"## agent on {n} held-out synthetic questions", "", markdown_table(header, rows), ""]
    md += [f"- {line}" for line in gain_lines(report)]
    md += ["", "## held-out EM over RL steps", "", markdown_table(_HELD_OUT_HEADER, _held_out_rows(report)), "",
           "## training curves", "", "![training curves](training_curves.svg)", "",
           "| step | reward | EM |", "|---:|---:|---:|"]
    md += [f"| {r['step']} | {r['reward']:.3f} | {r['em']:.3f} |" for r in report["curves"]]
    md += ["", "## stage timings (s)", ""] + [f"- {k}: {v:.1f}" for k, v in report["timings"].items()]
    md += ["", f"## {len(examples)} example trajectories after training", ""]
    for i, ex in enumerate(examples, 1):
        s = ex.get("scores", {})
        md += [f"### {i}. {ex.get('question')}", "",
               f"gold: {' | '.join(ex.get('golden_answers', []))}; answer: {s.get('answer')}; EM {s.get('em')}; "
               f"searches {ex.get('num_searches')}", "", "```", ex.get("response_text", "").strip(), "```", ""]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    body = ["<h1>searchr1 demo</h1>",
            f'<p class="note">{esc(warm.replace("**", "").replace("*", ""))}</p>',
            "<h2>settings</h2>", html_table(["setting", "value"], [[k, str(v)] for k, v in report["settings"].items()]),
            f"<h2>agent on {n} held-out synthetic questions</h2>", html_table(header, rows),
            *[f"<p>{esc(line)}</p>" for line in gain_lines(report)],
            "<h2>held-out EM over RL steps</h2>", html_table(_HELD_OUT_HEADER, _held_out_rows(report)),
            "<h2>training curves</h2>", *[f"<div>{s}</div>" for s in svgs],
            "<h2>stage timings</h2>",
            html_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in report["timings"].items()]),
            f"<h2>{len(examples)} example trajectories after training</h2>"]
    body += [render_episode(r, i) for i, r in enumerate(examples, start=1)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>searchr1 demo</title>"
            f"<style>{REPORT_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return {"md": out / "report.md", "html": out / "report.html"}


def report_examples(report: dict) -> int:
    return int(report.get("examples", 3))
