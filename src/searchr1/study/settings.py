"""Settings of `searchr1 study`: which arms, how many seeds, where results go, how intervals are made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param, parse_overrides
from searchr1.errors import ConfigError
from searchr1.rl.algorithms import ALGORITHMS

#: Every arm: the baselines (`start`: the starting model as an agent, pure RL's paired baseline), R1,
#: one Search-R1 arm per algorithm of `searchr1.rl.algorithms` (named after it), GRPO without the
#: retrieved-token mask, GRPO trained on simulated search, GRPO with LLDS, and GRPO's advantages
#: under GSPO's sequence-level loss.
ARM_NAMES: tuple[str, ...] = ("direct", "rag", "rag-warmup", "warmup", "start", "r1", *ALGORITHMS, "grpo-unmasked",
                              "grpo-simulated", "grpo-llds", "gspo")
#: The default of study.arms: the paper's arms, and RAG on the warmed-up model (the other
#: algorithms are there to be asked for).
PAPER_ARMS = ["direct", "rag", "rag-warmup", "warmup", "r1", "ppo", "grpo", "grpo-unmasked"]

#: The paper's claims, as "A:B" pairs tested on the same questions (A minus B).
DEFAULT_COMPARE = ["grpo:rag", "ppo:rag", "grpo:rag-warmup", "ppo:rag-warmup", "grpo:r1", "grpo:grpo-unmasked",
                   "ppo:grpo", "grpo:warmup", "ppo:warmup", "warmup:rag-warmup", "grpo-simulated:grpo"]

#: The sections an arm's own settings (study.arm_settings) may change: how it trains and plays.
#: The rest (questions, world, retriever, model, warm-up, scoring) is the study's, shared by every arm.
ARM_SETTING_SECTIONS = ("train", "agent", "rollout")
#: train.* keys the study sets for each run itself (from study.seeds, study.dir, study.save_every,
#: study.eval_every): an arm's setting of them would be overwritten.
STUDY_SETS = ("seed", "run_dir", "resume", "overwrite", "save_every", "keep_last", "eval_every")


def check_arm_settings(arm: str, overrides: list[str]) -> None:
    """ValueError unless `overrides` are dotted `key=value` settings an arm may have of its own. Whether
    each key exists and the arm's config holds together is checked when the study starts
    (`searchr1.study.arms.Arm.configure`), where the whole config is known."""
    where = f"arm_settings.{arm}"
    try:
        data = parse_overrides(overrides)
    except ConfigError as e:
        raise ValueError(f"{where}: {e}") from None
    if "study" in data:
        raise ValueError(f"{where}: per-arm settings may not change the study (study.*)")
    other = [s for s in data if s not in ARM_SETTING_SECTIONS]
    if other:
        raise ValueError(f"{where}: {other[0]!r} is shared by every arm; per-arm settings change "
                         f"{', '.join(s + '.*' for s in ARM_SETTING_SECTIONS)}")
    fixed = [k for k in STUDY_SETS if k in data.get("train", {})]
    if fixed:
        raise ValueError(f"{where}: train.{fixed[0]} is set for each run by the study (study.seeds, study.dir, "
                         "study.save_every, study.eval_every)")


@dataclass
class StudyConfig:
    dir: str = param("runs/study", "where the study keeps everything: runs, records, study.json/.md/.html")
    records: str = param("", "a copy of this study's small files from another machine (study_config.json, "
                             "warmup/warmup.json, runs/*/*/record.json; e.g. its results committed under "
                             "benchmarks/results/): its finished units are taken from there, not rerun; the settings "
                             "must match and the warm-up made here must reproduce its losses; '' = none")
    export: str = param("", "copy the study's small files (as `searchr1 study --export` does) to this directory "
                            "after each unit it finishes and at the end, e.g. the copy that study.records names, so "
                            "the results to commit are always there; '' = none")
    arms: list[str] = param(list(PAPER_ARMS), "arms to run: direct / rag (the base model prompted, no training), "
                                              "rag-warmup (RAG with the warmed-up model), warmup (the supervised "
                                              "warm-up alone, as an agent), r1 (RL without search, the r1 "
                                              "template), grpo-unmasked (GRPO with the loss on retrieved tokens "
                                              "too), grpo-simulated (GRPO trained on simulated search, "
                                              "evaluated on the real retriever), and Search-R1 with each train.algorithm: "
                                              f"{' / '.join(ALGORITHMS)} (the paper's: ppo, grpo), grpo-llds "
                                              "(GRPO + LLDS), gspo (GRPO advantages, GSPO loss)")
    arm_settings: dict[str, list[str]] = param(
        {}, "an arm's own settings, dotted key=value overrides of train.* / agent.* / rollout.* applied after its "
            "change, e.g. {tree_grpo: [train.group_size=6, train.rollout_tree=2]} for comparisons at an equal "
            "budget; shown in study.md, since such arms are not like-for-like")
    seeds: list[int] = param([0, 1, 2], "train.seed of each trained arm's runs (untrained arms decode greedily "
                                        "and run once)")
    warmup: bool = param(True, "trained arms (and the warmup arm) start from the supervised warm-up "
                               "(sft.*, synthetic demonstrations only), else from model.name")
    warmup_model: str = param("", "a warmed-up model directory to start from (e.g. another study's "
                                  "warmup/model) instead of running the warm-up; '' = run it")
    eval_every: int = param(0, "held-out evaluation every N training steps, for the EM curve (0 = only the "
                               "final one)")
    save_every: int = param(1, "checkpoint every N steps, so a killed study loses at most N steps of a run")
    keep_checkpoints: bool = param(False, "keep each finished run's checkpoint (full fine-tuning of a 135M model "
                                          "is ~1.6 GB with optimizer state)")
    compare: list[str] = param(list(DEFAULT_COMPARE), "paired tests 'A:B' (A minus B, same questions); pairs "
                                                      "naming an arm not in the study are skipped")
    metric: Literal["em", "f1", "cover_em", "em_lenient", "f1_lenient", "cover_em_lenient"] = param(
        "em", "the per-question score of the headline table and the paired tests")
    bootstrap: int = param(10_000, "bootstrap resamples of every interval")
    permutations: int = param(10_000, "sign flips of the paired permutation test (exact below 2^n <= this)")
    confidence: float = param(0.95, "confidence level of every interval")
    split_hops: bool = param(True, "synthetic world: report single-hop and two-hop questions as two datasets")

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError(f"arms must name at least one of {', '.join(ARM_NAMES)}")
        unknown = [a for a in self.arms if a not in ARM_NAMES]
        if unknown:
            raise ValueError(f"unknown arm {unknown[0]!r}: arms are {', '.join(ARM_NAMES)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms lists an arm twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must list at least one seed, none twice")
        if self.eval_every < 0 or self.save_every < 1:
            raise ValueError("need eval_every >= 0 and save_every >= 1")
        if self.bootstrap < 100 or self.permutations < 100:
            raise ValueError("need bootstrap >= 100 and permutations >= 100 resamples")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence must be in (0.5, 1)")
        for name, overrides in self.arm_settings.items():
            if name not in self.arms:
                raise ValueError(f"arm_settings names {name!r}, which is not in arms ({', '.join(self.arms)})")
            check_arm_settings(name, overrides)
        for pair in self.compare:
            a, sep, b = pair.partition(":")
            if not sep or a not in ARM_NAMES or b not in ARM_NAMES or a == b:
                raise ValueError(f"compare entry {pair!r}: write 'A:B' with two different arms of "
                                 f"{', '.join(ARM_NAMES)}")
