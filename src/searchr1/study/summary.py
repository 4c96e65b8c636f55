"""Records of finished units -> the numbers of study.json: per arm and dataset, every score with
its interval over questions and its spread over seeds; paired tests between arms; curves with
seed bands; the paper's numbers alongside where the datasets are the paper's.

Seeds are averaged per question before resampling questions, so an interval over questions says
how much the question sample moves the arm's mean; the seed interval (Student's t over per-seed
means) says how much the training seed does. Both are reported; neither contains the other.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from searchr1.settings import Config
from searchr1.study import paper
from searchr1.study.arms import ARMS
from searchr1.study.stats import bootstrap_ci, mcnemar, paired_difference, seed_interval, stratified_ci

#: Per-step training metrics a record keeps (the study's curves).
CURVE_KEYS = ("reward/mean", "reward/em", "actor/kl", "actor/entropy", "rollout/response_length",
              "rollout/searches_per_traj", "rollout/invalid_rate", "time/step_s", "budget/generated_tokens",
              "budget/searches")
#: The rollout budget of a run, summed over its RL steps: what an "equal budget" is checked against.
BUDGET = {"generated_tokens": "budget/generated_tokens", "searches": "budget/searches"}
SCORES = ("em", "f1", "cover_em", "em_lenient", "f1_lenient", "cover_em_lenient")
#: Averaged per episode into each arm's "behaviour" table.
BEHAVIOUR = ("num_searches", "valid_format", "answered")
ALL = "all"        # every question of every dataset pooled (the paired tests' headline)
AVERAGE = "average"  # the unweighted mean over datasets (the paper's Avg. column)


def _question_scores(record: Mapping, label: str, ids: Sequence[str], key: str) -> list[float]:
    episodes = record["episodes"][label]
    missing = [i for i in ids if i not in episodes]
    if missing:
        raise ValueError(f"{record['arm']} seed {record['seed']}: {len(missing)} questions of {label} were not "
                         f"played (e.g. {missing[0]!r}); the study's questions changed under it")
    if key == "answered":
        return [float(episodes[i].get("stop_reason") == "answer") for i in ids]
    return [float(episodes[i][key] or 0.0) for i in ids]


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*per_seed)]


def _arm_scores(runs: list[Mapping], ids: Mapping[str, list[str]], sc) -> dict:
    """label (and average / all) -> score key -> {mean, low, high, per_seed, seed_interval}."""
    opts = {"confidence": sc.confidence, "resamples": sc.bootstrap}
    out: dict[str, dict] = {}
    for key in SCORES:
        per_label = {label: [_question_scores(r, label, qids, key) for r in runs] for label, qids in ids.items()}
        for label, per_seed in per_label.items():
            mean, low, high = bootstrap_ci(_seed_mean(per_seed), **opts)
            seeds = [statistics.fmean(s) for s in per_seed]
            out.setdefault(label, {})[key] = {"mean": mean, "low": low, "high": high, "per_seed": seeds,
                                              "seed_interval": seed_interval(seeds, confidence=sc.confidence)}
        if len(ids) > 1:
            mean, low, high = stratified_ci([_seed_mean(p) for p in per_label.values()], **opts)
            seeds = [statistics.fmean(statistics.fmean(p[i]) for p in per_label.values()) for i in range(len(runs))]
            out.setdefault(AVERAGE, {})[key] = {"mean": mean, "low": low, "high": high, "per_seed": seeds,
                                                "seed_interval": seed_interval(seeds, confidence=sc.confidence)}
    return out


def _behaviour(runs: list[Mapping], ids: Mapping[str, list[str]]) -> dict:
    return {label: {key: statistics.fmean(statistics.fmean(_question_scores(r, label, qids, key)) for r in runs)
                    for key in BEHAVIOUR}
            for label, qids in ids.items()}


def _band(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def _pooled_em(record: Mapping, ids: Mapping[str, list[str]]) -> float:
    return statistics.fmean(v for label, qids in ids.items() for v in _question_scores(record, label, qids, "em"))


def _curves(runs: list[Mapping], ids: Mapping[str, list[str]], start_em: float | None) -> dict:
    """key -> [{step, mean, min, max, n}] over seeds; "heldout/em" joins the start (the warm-up
    arm's EM on the study's questions, step 0), the trainer's periodic evaluations (pooled over
    their datasets) and each run's final evaluation."""
    series: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        for row in r["curves"]:
            for key in CURVE_KEYS:
                if row.get(key) is not None:
                    series.setdefault(key, {}).setdefault(row["step"], []).append(float(row[key]))
            # the arm's own mode's EM (records of studies before 2026-12-07 also logged direct and rag)
            evals = [v for k, v in row.items()
                     if k.startswith("eval/") and k.endswith(f"/{r['mode']}/em") and v is not None]
            if evals and row["step"] < r["train"]["steps"]:
                series.setdefault("heldout/em", {}).setdefault(row["step"], []).append(statistics.fmean(evals))
        series.setdefault("heldout/em", {}).setdefault(r["train"]["steps"], []).append(_pooled_em(r, ids))
        if start_em is not None:
            series["heldout/em"].setdefault(0, []).append(start_em)
    return {key: [{"step": s, **_band(v)} for s, v in sorted(by_step.items())] for key, by_step in series.items()}


def _budget(runs: list[Mapping]) -> dict | None:
    """name -> {mean, per_seed}: each run's generated tokens and searches summed over its steps (None
    for records from before the trainer logged its budget)."""
    if not any(key in row for r in runs for row in r["curves"] for key in BUDGET.values()):
        return None
    out = {}
    for name, key in BUDGET.items():
        per_seed = [sum(row.get(key) or 0.0 for row in r["curves"]) for r in runs]
        out[name] = {"mean": statistics.fmean(per_seed), "per_seed": per_seed}
    return out


def _run_scores(runs: list[Mapping], labels: list[str], ids: Mapping[str, list[str]], key: str) -> list[list[float]]:
    """Per run, the scores of the questions of `labels`, in order."""
    return [[v for label in labels for v in _question_scores(r, label, ids[label], key)] for r in runs]


def _comparisons(arms: Mapping[str, list[Mapping]], ids: Mapping[str, list[str]], sc) -> list[dict]:
    out = []
    labels = list(ids) + ([ALL] if len(ids) > 1 else [])
    for pair in sc.compare:
        a, b = pair.split(":")
        if a not in arms or b not in arms:
            continue
        for label in labels:
            parts = list(ids) if label == ALL else [label]

            sa, sb = (_run_scores(arms[name], parts, ids, sc.metric) for name in (a, b))
            test = paired_difference(_seed_mean(sa), _seed_mean(sb), confidence=sc.confidence,
                                     resamples=sc.bootstrap, permutations=sc.permutations)
            entry = {"a": a, "b": b, "dataset": label, "metric": sc.metric, **test}
            if sc.metric.startswith("em"):  # binary per run: McNemar on each seed's pairing
                pairs = [(i, j) for i in range(len(sa)) for j in range(len(sb))
                         if len(sa) == 1 or len(sb) == 1 or i == j]
                entry["mcnemar"] = [{"seed_a": arms[a][i]["seed"], "seed_b": arms[b][j]["seed"],
                                     **mcnemar(sa[i], sb[j])} for i, j in pairs]
            out.append(entry)
    return out


def summarise(cfg: Config, records: Sequence[Mapping], questions: Mapping[str, Sequence[Mapping]],
              warm: Mapping | None) -> dict:
    """The study.json dict of the records finished so far (`complete` is set by the caller)."""
    sc, tc = cfg.study, cfg.train
    ids = {label: [str(r["id"]) for r in rows] for label, rows in questions.items()}
    by_arm: dict[str, list[Mapping]] = {}
    for r in records:
        by_arm.setdefault(r["arm"], []).append(r)
    start_arm = next((a for a in ("start", "warmup") if a in by_arm), None)  # the same model: where RL starts
    start_em = _pooled_em(by_arm[start_arm][0], ids) if start_arm else None
    arms = {}
    for name, runs in by_arm.items():
        a = ARMS[name]
        entry = {"label": a.label, "about": a.about, "trained": a.trained, "mode": a.mode,
                 "model": runs[0]["model"], "seeds": [r["seed"] for r in runs],
                 "overrides": runs[0].get("overrides", []),
                 "scores": _arm_scores(runs, ids, sc), "behaviour": _behaviour(runs, ids),
                 "seconds": {k: statistics.fmean(r["seconds"].get(k, 0.0) for r in runs)
                             for k in ("train", "eval")}}
        if a.trained:
            entry["curves"] = _curves(runs, ids, start_em)
            entry["train"] = runs[0]["train"]
            entry["budget"] = _budget(runs)
        arms[name] = entry
    return {
        "complete": False,
        "settings": {
            "model": cfg.model.name, "warm-up": bool(sc.warmup), "sft steps": cfg.sft.steps if sc.warmup else 0,
            "train data": ",".join(tc.questions.datasets), "train steps": tc.steps, "questions per step": tc.prompts_per_step,
            "group size": tc.group_size, "learning rate": tc.optim.lr, "KL coefficient": tc.kl.coef,
            "fine-tuning": f"LoRA r={tc.lora.r}" if tc.lora.r else "full",
            "retriever": f"{cfg.retriever.method} top-{cfg.agent.topk}", "max searches": cfg.agent.max_turns,
            "seeds": list(sc.seeds), "metric": sc.metric, "confidence": sc.confidence,
            "bootstrap resamples": sc.bootstrap, "permutations": sc.permutations,
        },
        "datasets": {label: len(v) for label, v in ids.items()},
        "warmup": dict(warm) if warm else None,
        "arms": arms,
        "comparisons": _comparisons(by_arm, ids, sc),
        "paper": paper.table_rows(list(ids)),
        "seconds": sum(sum(r["seconds"].values()) for r in records),
    }
