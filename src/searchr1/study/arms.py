"""The arms of a study: what each one is, as a change to the study's one config.

Every trained arm starts from the same model (the warm-up, or model.name without one) with the
same questions, steps, batch shape and learning rate; an arm changes only what names it. The
untrained arms are the paper's baselines: direct and RAG prompt the base model (model.name), the
warmup arm plays the warmed-up model as a search agent (the starting point of the trained arms),
and rag-warmup gives that same warmed-up model one retrieval in the prompt: RAG with the model the
trained arms start from, the like-for-like baseline when a warm-up is used.

An arm may also have settings of its own (study.arm_settings), applied after its change: other
group sizes for tree rollouts, say, so that arms compare at an equal budget of generated tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from searchr1.config import with_overrides
from searchr1.errors import ConfigError
from searchr1.rl.algorithms import ALGORITHMS
from searchr1.settings import Config

#: LLDS's coefficient in its paper's runs (arXiv 2512.04220).
LLDS_PAPER_COEF = 0.1


@dataclass(frozen=True)
class Arm:
    name: str
    label: str             # the row name in tables
    trained: bool
    mode: str              # the eval mode its questions are played in: direct | rag | agent
    start: str             # which model it runs or trains: "base" (model.name) or "start" (the warm-up if any)
    about: str
    change: Callable[[Config], Config] = lambda cfg: cfg

    def configure(self, cfg: Config) -> Config:
        """`cfg` with this arm's changes (training algorithm, template, masking, search turns), then its
        own settings (study.arm_settings); a ConfigError naming the arm if the result is not a valid config."""
        overrides = cfg.study.arm_settings.get(self.name, [])
        try:
            changed = self.change(cfg)
            return with_overrides(changed, overrides) if overrides else changed
        except (ConfigError, ValueError) as e:
            where = f" with study.arm_settings.{self.name}={overrides}" if overrides else ""
            raise ConfigError(f"arm {self.name}{where}: {e}") from None


def _train(algorithm: str, **loss) -> Callable[[Config], Config]:
    """Train with `algorithm`, and these train.loss settings changed."""
    def change(cfg: Config) -> Config:
        tc = dataclasses.replace(cfg.train, algorithm=algorithm, loss=dataclasses.replace(cfg.train.loss, **loss))
        return dataclasses.replace(cfg, train=tc)
    return change


def _no_search(cfg: Config) -> Config:
    """R1: the same RL (GRPO), but the r1 prompt and no search turn: the first turn is the last."""
    cfg = _train("grpo")(cfg)
    return dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, max_turns=0, template="r1"))


def _simulated_search(cfg: Config) -> Config:
    """GRPO whose rollouts search documents a model writes (retriever.simulated.*, ZeroSearch); the
    arm is evaluated, like every other, on the study's retriever (the real index)."""
    cfg = _train("grpo")(cfg)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, retriever_method="simulated"))


def _llds(cfg: Config) -> Config:
    """GRPO with LLDS: the config's llds_coef when it sets one, else the paper's."""
    return _train("grpo", llds_coef=cfg.train.loss.llds_coef or LLDS_PAPER_COEF)(cfg)


def _trees(change: Callable[[Config], Config]) -> Callable[[Config], Config]:
    """`change` under tree rollouts: train.rollout_tree as set, else one tree per question."""
    def with_trees(cfg: Config) -> Config:
        return change(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                         rollout_tree=cfg.train.rollout_tree or 1)))
    return with_trees


def _search_r1(name: str) -> Arm:
    """Search-R1 trained with the algorithm `name` of `searchr1.rl.algorithms`."""
    a = ALGORITHMS[name]
    return Arm(name, f"Search-R1 {a.title}", True, "agent", "start",
               f"{a.title} ({a.help}) with search, retrieved tokens masked",
               _trees(_train(name)) if a.needs_trees else _train(name))


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("direct", "Direct inference", False, "direct", "base",
        "the base model answers from its own knowledge (direct template, no retrieval)"),
    Arm("rag", "RAG", False, "rag", "base",
        "the base model answers from the top-k passages retrieved for the question (rag template)"),
    Arm("rag-warmup", "RAG, warmed-up model", False, "rag", "start",
        "the warmed-up model answers from the top-k passages retrieved for the question: RAG with the model "
        "every trained arm starts from"),
    Arm("warmup", "Warm-up only (SFT)", False, "agent", "start",
        "the supervised warm-up alone, played as a search agent: where every trained arm starts"),
    Arm("start", "Starting point, as an agent", False, "agent", "start",
        "the model every trained arm starts from, played as a search agent before any RL: the untrained "
        "model.name under study.warmup=false (pure RL's paired baseline), else the same model as `warmup`"),
    Arm("r1", "R1 (RL, no search)", True, "agent", "start",
        "GRPO with the r1 template and no search turns (agent.max_turns=0)", _no_search),
    *(_search_r1(name) for name in ALGORITHMS),
    Arm("grpo-unmasked", "Search-R1 GRPO, no masking", True, "agent", "start",
        "GRPO with search, the loss also on retrieved tokens (train.loss.mask_retrieved=false)",
        _train("grpo", mask_retrieved=False)),
    Arm("grpo-simulated", "Search-R1 GRPO, simulated search", True, "agent", "start",
        "GRPO trained on simulated search (documents written by retriever.simulated.model, with ZeroSearch's "
        "noise curriculum; train.retriever_method=simulated), evaluated on the real retriever",
        _simulated_search),
    Arm("grpo-llds", "Search-R1 GRPO + LLDS", True, "agent", "start",
        f"GRPO with the LLDS regulariser against likelihood collapse (train.loss.llds_coef={LLDS_PAPER_COEF}, the "
        "paper's, unless the config sets one; the gate as configured)", _llds),
    Arm("gspo", "Search-R1 GSPO", True, "agent", "start",
        "GRPO's advantages under GSPO's sequence-level ratio and clipping (train.loss.mode=gspo; the clip range "
        "and aggregation as configured)", _train("grpo", mode="gspo")),
)}


def arm(name: str) -> Arm:
    try:
        return ARMS[name]
    except KeyError:
        raise ValueError(f"unknown arm {name!r}: one of {', '.join(ARMS)}") from None
