"""The resumable study loop: one supervised warm-up, then every arm x seed as a unit of work.

Layout under `study.dir`:

  study_config.json         what the units depend on; a rerun with other settings is refused
  world/ index/             the synthetic world and its BM25 index (warm-up; synthetic studies)
  warmup/model warmup.json  the warmed-up model every trained arm starts from
  runs/{arm}/{seed}/        train/ (checkpoints, metrics.jsonl), eval/ (trajectories), record.json
  study.json study.md study.html plots/

A unit is done when its record.json exists (written atomically, last). A killed study reruns only
unfinished units; a killed training run resumes from its last checkpoint (`study.save_every`).
A study that outlives its machine goes on from a copy of its small files (`export_records`, which
`searchr1 study --export DIR` runs; e.g. the copy committed under benchmarks/results/): with
`study.records=DIR`, the units finished there are taken from it, not rerun; `study.export=DIR`
refreshes such a copy after every unit this run finishes.
The steps themselves (world, warm-up, train, evaluate on `rollout.backend`) are `searchr1.pipeline`'s,
which the demo runs too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from searchr1 import pipeline
from searchr1.atomic import write_text_atomic
from searchr1.config import deep_merge
from searchr1.data.benchmarks import subset
from searchr1.data.questions import as_row, load_datasets, synthetic_split, trains_on_synthetic
from searchr1.data.world import prepare_world
from searchr1.errors import SearchR1Error
from searchr1.settings import Config
from searchr1.study.arms import Arm, arm
from searchr1.study.report import write_report
from searchr1.study.summary import CURVE_KEYS, summarise

#: Per-episode fields kept in a record, besides the scores.
EPISODE_KEYS = ("num_searches", "stop_reason")

#: Settings that change no unit's result: a resumed study may change them.
_FREE = {"study": {"dir", "records", "export", "arms", "seeds", "compare", "metric", "bootstrap", "permutations",
                   "confidence", "keep_checkpoints"},
         "model": {"threads"}, "train": {"progress", "tensorboard", "wandb"},
         "eval": {"batch_size", "html", "html_max_per_run"}}


class StudyConfigChanged(SearchR1Error):
    """A study directory resumed with settings its finished units were not run with."""


def _comparable(data: dict) -> dict:
    """`data` (a config as a dict) without what changes no unit's result."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, keys in _FREE.items():
        for key in keys:
            data.get(section, {}).pop(key, None)
    for section in ("server", "demo", "data"):  # not read by a study
        data.pop(section, None)
    return data


def _fingerprint(cfg: Config) -> dict:
    return _comparable(dataclasses.asdict(cfg))


def _diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_config(cfg: Config, root: Path, record: bool = True) -> None:
    """Record the settings of a new study (unless not `record`); refuse to resume one with settings
    that change results."""
    path = root / "study_config.json"
    new = _fingerprint(cfg)
    if path.is_file():
        # a setting added to searchr1 after the study started was, for that study, its default
        old = deep_merge(_fingerprint(Config()), _comparable(json.loads(path.read_text())))
        # study.arms may change between runs: an arm this run leaves out keeps the settings it ran with
        left_out = {k: v for k, v in old["study"]["arm_settings"].items() if k not in cfg.study.arms}
        new["study"]["arm_settings"] = {**left_out, **new["study"]["arm_settings"]}
        changed = _diff(old, new)
        if changed:
            raise StudyConfigChanged(
                f"{root} holds a study run with other settings ({'; '.join(changed[:6])}"
                f"{'; ...' if len(changed) > 6 else ''}); its finished runs would not be comparable. "
                "Use another study.dir, or delete the old one")
    elif record:
        write_text_atomic(path, json.dumps(new, indent=1))
    else:
        raise SearchR1Error(f"{root} has no study_config.json: it is not a copy of a study's records")


def check_warmup(warm: dict, records: Path, tolerance: float = 1e-4) -> None:
    """Refuse records whose warm-up this machine did not reproduce: their trained runs started from
    another model than the runs still to come. The losses, step by step, are the check."""
    path = records / "warmup" / "warmup.json"
    if not path.is_file():
        return
    theirs = json.loads(path.read_text()).get("losses", [])
    ours = warm.get("losses", [])
    gap = max((abs(a - b) for a, b in zip(ours, theirs)), default=0.0)
    if len(ours) != len(theirs) or gap > tolerance:
        raise SearchR1Error(
            f"the warm-up made here (losses {[round(x, 6) for x in ours]}) does not reproduce the one of "
            f"{records} ({[round(x, 6) for x in theirs]}): its runs started from another model. Run the study "
            "without study.records, or on a machine that reproduces it")


#: What outlives a study's machine: its report, its settings, its warm-up's record and each unit's
#: record (tens of KB each). Models, checkpoints and trajectories stay behind.
SMALL_FILES = ("study.json", "study.md", "study.html", "plots/*.svg", "study_config.json", "warmup/warmup.json",
               "runs/*/*/record.json")


def export_records(root: Path, dest: Path) -> list[Path]:
    """Copy a study's small files (SMALL_FILES) from `root` to `dest`, in the same layout, so that
    `study.records=dest` continues the study elsewhere; returns the files written."""
    if not (root / "study_config.json").is_file():
        raise SearchR1Error(f"{root} holds no study (no study_config.json)")
    written = []
    try:
        for pattern in SMALL_FILES:
            for src in sorted(root.glob(pattern)):
                out = dest / src.relative_to(root)
                out.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(out, src.read_text())
                written.append(out)
    except OSError as e:
        raise SearchR1Error(f"cannot copy the study's records to {dest}: {e}") from None
    return written


# ----------------------------------------------------------------------------- world, questions, warm-up


def _world_index(cfg: Config, root: Path):
    """The synthetic world under root/world, its BM25 index under root/index; returns (cfg of that
    world's retriever, train questions)."""
    corpus, train_questions, _ = prepare_world(cfg.world, root / "world" / "data")
    pipeline.index_world(cfg, corpus, root / "index", ["bm25"])
    return pipeline.retriever_config(cfg, root / "index", "bm25"), train_questions


def study_questions(cfg: Config) -> dict[str, list[dict]]:
    """label -> rows every arm is scored on: the synthetic world's held-out split (by hop count
    when study.split_hops), each label limited by eval.limit / eval.seed; else eval.datasets."""
    if not trains_on_synthetic(cfg.train):
        return {label: rows for label, (_, rows) in load_datasets(cfg.eval).items()}
    held_out = synthetic_split(cfg.world)[1]
    if not cfg.study.split_hops:
        groups = {"synthetic": held_out}
    else:
        groups = {f"synthetic_{h}hop": [q for q in held_out if q.hops == h] for h in sorted({q.hops for q in held_out})}
    return {label: subset([as_row(q) for q in qs], cfg.eval.limit, cfg.eval.seed) for label, qs in groups.items()}


def warm_up(cfg: Config, root: Path, world_retriever, train_questions, console=None) -> dict:
    """The supervised warm-up on synthetic demonstrations (format only), once per study."""
    info_path = root / "warmup" / "warmup.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    result = pipeline.warm_up(cfg, pipeline.load_policy(cfg), world_retriever, train_questions,
                              root / "warmup" / "model", console)
    if not result["steps"]:
        raise SearchR1Error("the warm-up kept no demonstration (no question retrieved its passages)")
    info = {k: result[k] for k in ("steps", "kept", "dropped", "tokens", "first_loss", "last_loss", "losses")}
    info["seconds"] = time.perf_counter() - t0
    write_text_atomic(info_path, json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------- units


def unit_dir(root: Path, a: Arm, seed: int | None) -> Path:
    return root / "runs" / a.name / (f"seed{seed}" if seed is not None else "greedy")


def _episodes(results: dict, out_dir: Path) -> dict[str, dict[str, dict]]:
    """label -> question id -> its scores (and searches, stop reason), from the trajectory files."""
    from searchr1.eval.harness import read_trajectories

    out: dict[str, dict[str, dict]] = {}
    for key, name in results["files"].items():
        label = key.rsplit("/", 1)[0]
        out[label] = {}
        for r in read_trajectories(out_dir / name):
            scores = {k: v for k, v in r["scores"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            scores.update({k: r.get(k) for k in EPISODE_KEYS})
            scores["valid_format"] = bool(r["scores"].get("valid_format"))
            out[label][str(r["id"])] = scores
    return out


def _curves(run_dir: Path) -> list[dict]:
    """Per-step rows of the training curves (eval rows merged into their step's)."""
    from searchr1.train.metrics_log import read_metrics

    by_step: dict[int, dict] = {}
    for row in read_metrics(run_dir):
        keep = {k: v for k, v in row.items() if k in CURVE_KEYS or (k.startswith("eval/") and k.endswith("/em"))}
        by_step.setdefault(int(row["step"]), {"step": int(row["step"])}).update(keep)
    return [by_step[s] for s in sorted(by_step)]


def _evaluate(cfg: Config, a: Arm, out_dir: Path, retriever, questions, policy: tuple | None) -> dict:
    ecfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, modes=[a.mode], out_dir=str(out_dir),
                                                             html=False))
    return pipeline.evaluate_policy(ecfg, None, retriever, questions, policy)


def run_unit(cfg: Config, a: Arm, seed: int | None, model: str, root: Path, retriever, questions,
             console=None) -> dict:
    """Train (when the arm trains) and evaluate one arm x seed (on `rollout.backend`); returns its record."""
    udir = unit_dir(root, a, seed)
    cfg = a.configure(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=model)))
    record = {"arm": a.name, "seed": seed, "model": model, "mode": a.mode, "curves": [], "seconds": {},
              "overrides": list(cfg.study.arm_settings.get(a.name, []))}
    t0 = time.perf_counter()
    policy = None  # untrained arms play cfg.model
    if a.trained:
        sc = cfg.study
        tc = dataclasses.replace(cfg.train, seed=seed, run_dir=str(udir / "train"), resume=True,
                                 save_every=sc.save_every, keep_last=1, eval_every=sc.eval_every)
        # the periodic held-out evaluations play the arm's own mode only, as its final one does
        cfg = dataclasses.replace(cfg, train=tc, eval=dataclasses.replace(cfg.eval, modes=[a.mode], html=False))
        _, policy = pipeline.train_policy(cfg, retriever, console)
        record["seconds"]["train"] = time.perf_counter() - t0
        record["curves"] = _curves(udir / "train")
        record["train"] = {"steps": tc.steps, "algorithm": tc.algorithm, "template": cfg.agent.template,
                           "mask_retrieved": tc.loss.mask_retrieved, "max_turns": cfg.agent.max_turns,
                           "group_size": tc.group_size, "rollout_tree": tc.rollout_tree,
                           "loss_mode": tc.loss.mode, "llds_coef": tc.loss.llds_coef}
    t1 = time.perf_counter()
    results = _evaluate(cfg, a, udir / "eval", retriever, questions, policy)
    record["seconds"]["eval"] = time.perf_counter() - t1
    record["metrics"] = {label: m[a.mode] for label, m in results["metrics"].items()}
    record["episodes"] = _episodes(results, udir / "eval")
    return record


# ----------------------------------------------------------------------------- the study


def run_study(cfg: Config, console=None) -> dict:
    """Run (or resume) `cfg.study`; returns the summary written to study.json."""
    import torch

    from searchr1.retrieval.local import open_retriever

    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    sc = cfg.study
    say = (lambda text: console.print(text, markup=False)) if console is not None else (lambda text: None)
    arms = [arm(n) for n in sc.arms]
    warming = sc.warmup and any(a.start == "start" for a in arms)
    # settings that cannot work fail here, before anything is written or loaded
    if warming and sc.warmup_model and not Path(sc.warmup_model).is_dir():
        raise SearchR1Error(f"study.warmup_model {sc.warmup_model!r} is not a model directory")
    if warming and not sc.warmup_model and cfg.sft.steps < 1:
        raise SearchR1Error("study.warmup=true needs sft.steps >= 1 (or study.warmup=false: RL from model.name)")
    for a in arms:  # each arm's config (its change, its study.arm_settings) is a valid config
        a.configure(cfg)
    root = Path(sc.dir)
    root.mkdir(parents=True, exist_ok=True)
    check_config(cfg, root)
    if sc.export:  # a copy that cannot be written fails here, not after the first unit's hours; nothing
        # is copied yet, since the copy may be study.records, whose files are checked below
        try:
            Path(sc.export).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchR1Error(f"cannot copy the study's records to {sc.export}: {e}") from None
    copied = Path(sc.records) if sc.records else None  # another machine's records of this study

    def publish(summary: dict) -> None:
        """Write the report, then refresh the exported copy (study.export) from it."""
        write_report(root, summary)
        if sc.export:
            export_records(root, Path(sc.export))

    if copied is not None:
        check_config(cfg, copied, record=False)
    synthetic = trains_on_synthetic(cfg.train)
    needs_world = synthetic or (warming and not sc.warmup_model)
    world_rcfg, train_questions = _world_index(cfg, root) if needs_world else (None, [])
    if synthetic:
        cfg = dataclasses.replace(cfg, retriever=world_rcfg)
    questions = study_questions(cfg)
    say(f"study: {len(arms)} arms, seeds {list(sc.seeds)}, "
        f"{', '.join(f'{k} ({len(v)})' for k, v in questions.items())} -> {root}")
    retriever = open_retriever(cfg.retriever) if any(a.mode != "direct" or a.trained for a in arms) else None
    warm = None
    try:
        start_model = cfg.model.name
        if warming and sc.warmup_model:
            start_model = sc.warmup_model
            info = Path(sc.warmup_model).parent / "warmup.json"  # where a study keeps it
            warm = {**(json.loads(info.read_text()) if info.is_file() else {}), "model": start_model}
            say(f"study: starting from the warmed-up model {start_model}")
        elif warming:
            world_retriever = retriever if synthetic else open_retriever(world_rcfg)
            try:
                warm = warm_up(cfg, root, world_retriever, train_questions, console)
            finally:
                if world_retriever is not retriever:
                    world_retriever.close()
            start_model = str(root / "warmup" / "model")
            say(f"study: warm-up {warm['steps']} steps on {warm['kept']} demonstrations -> {start_model}")
            if copied is not None:
                check_warmup(warm, copied)
        records = []
        # seed-major: a study stopped early holds every arm at its first seeds, not some arms at all seeds
        units = [(a, None) for a in arms if not a.trained] + [(a, s) for s in sc.seeds for a in arms if a.trained]
        for i, (a, seed) in enumerate(units):
            udir = unit_dir(root, a, seed)
            path = udir / "record.json"
            name = a.name + (f" seed {seed}" if seed is not None else "")
            copy = copied / path.relative_to(root) if copied is not None else None
            if not path.is_file() and copy is not None and copy.is_file():
                udir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, copy.read_text())
                say(f"study: {name} taken from {copy}")
            if path.is_file():
                records.append(json.loads(path.read_text()))
                continue
            say(f"study: {name} ...")
            model = start_model if a.start == "start" else cfg.model.name
            record = run_unit(cfg, a, seed, model, root, retriever, questions, console)
            udir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(record))
            if a.trained and not sc.keep_checkpoints:
                shutil.rmtree(udir / "train" / "checkpoints", ignore_errors=True)
            records.append(record)
            if i < len(units) - 1:  # partial results survive a kill; after the last unit, the final report
                publish(summarise(cfg, records, questions, warm))
            say(f"study: {name} done in {sum(record['seconds'].values()):.0f} s")
    finally:
        if retriever is not None:
            getattr(retriever, "close", lambda: None)()
    summary = summarise(cfg, records, questions, warm)
    summary["complete"] = True
    publish(summary)
    return summary
