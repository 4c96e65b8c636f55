"""The root config every `searchr1` command reads: one dataclass tree, one YAML file.

Sections are added here as the package grows; each section's fields live with the code that
uses them (e.g. `searchr1.retrieval.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param
from searchr1.data.settings import DataConfig
from searchr1.eval.settings import EvalConfig
from searchr1.retrieval.settings import IndexConfig, RetrieverConfig, ServerConfig
from searchr1.rollout.settings import AgentConfig, ModelConfig, RolloutConfig
from searchr1.study.settings import StudyConfig
from searchr1.train.settings import SFTConfig, TrainConfig


@dataclass
class WorldConfig:
    seed: int = param(0, "seed of the synthetic world (names, facts, question split)")
    countries: int = param(8, "countries in the synthetic world")
    cities_per_country: int = param(4, "cities per country")
    people: int = param(120, "people")
    organisations: int = param(40, "organisations")
    test_fraction: float = param(0.2, "share of questions held out for evaluation")

    def __post_init__(self) -> None:
        if min(self.countries, self.cities_per_country, self.people, self.organisations) < 1:
            raise ValueError("world sizes must be >= 1")
        if not 0 < self.test_fraction < 1:
            raise ValueError("test_fraction must be in (0, 1)")


@dataclass
class DemoConfig:
    dir: str = param("searchr1-demo", "directory for everything the demo writes (corpus, index, report)")
    methods: list[Literal["bm25", "dense"]] = param(["bm25", "dense"], "indexes the demo builds")
    max_questions: int = param(200, "held-out questions used to measure retrieval")
    retrieval_only: bool = param(False, "stop after the retrieval check (no model is loaded)")
    eval_questions: int = param(32, "held-out questions the agent is evaluated on, before and after training")
    eval_after_sft: bool = param(True, "also evaluate between the warm-up and RL (when the warm-up runs), so "
                                       "the report separates what the warm-up and what RL changed")
    eval_every: int = param(0, "also evaluate the policy on the held-out questions every N RL steps, for the "
                                "report's curve of held-out EM over steps (0 = only before and after)")
    examples: int = param(3, "example trajectories (after training) shown in the report")

    def __post_init__(self) -> None:
        if self.eval_questions < 1:
            raise ValueError("demo.eval_questions must be >= 1")
        if min(self.eval_every, self.examples, self.max_questions) < 0:
            raise ValueError("demo.eval_every, demo.examples and demo.max_questions must be >= 0")


@dataclass
class Config:
    index: IndexConfig = param(IndexConfig, "`searchr1 index build`: corpus -> index directory")
    retriever: RetrieverConfig = param(RetrieverConfig, "which retriever searches, and how")
    server: ServerConfig = param(ServerConfig, "`searchr1 serve`: the HTTP retrieval server")
    model: ModelConfig = param(ModelConfig, "the policy model that generates rollouts")
    agent: AgentConfig = param(AgentConfig, "the multi-turn search agent's limits")
    rollout: RolloutConfig = param(RolloutConfig, "the engine that generates (train, eval, ask): ours or vLLM")
    world: WorldConfig = param(WorldConfig, "the synthetic world: its encyclopedia and questions (the demo, "
                                            "train.questions.datasets=synthetic)")
    demo: DemoConfig = param(DemoConfig, "`searchr1 demo`: the built-in end-to-end run")
    data: DataConfig = param(DataConfig, "`searchr1 data prepare`: QA benchmarks -> parquet with prompts")
    eval: EvalConfig = param(EvalConfig, "`searchr1 eval`: benchmarks x modes (direct, rag, agent) -> reports")
    train: TrainConfig = param(TrainConfig, "`searchr1 train`: RL (train.algorithm) over multi-turn search rollouts")
    sft: SFTConfig = param(SFTConfig, "optional supervised warm-up on search demonstrations before RL (demo)")
    study: StudyConfig = param(StudyConfig, "`searchr1 study`: baselines against trained arms, several seeds, "
                                            "intervals and paired tests")
