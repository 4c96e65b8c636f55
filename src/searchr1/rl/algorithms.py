"""The table of RL algorithms: one row per algorithm, read by the settings, the learner, the
models, the veRL export and the study.

A row names the algorithm's advantage, whether it trains a critic, whether it needs groups of
samples per prompt, where the KL to the reference goes by default, and veRL's name for it.
Adding an algorithm is one pure function in :mod:`.advantages` and one row here.

This module imports no torch at module import (the settings import it): each row's advantage is a
small adapter that imports :mod:`.advantages` when it is first called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ALGORITHMS", "AdvantageInputs", "Algorithm", "algorithm"]


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage may read: the batch's tensors and plain numbers (no config object).

    ``scores`` ``[B]`` outcome rewards; ``group_ids`` ``[B]``; ``mask`` ``[B, T]`` (1 = generated);
    ``token_rewards`` ``[B, T]`` the scores on the last generated token minus the KL penalty when
    the KL is in the reward (:func:`~.advantages.kl_penalized_rewards`); ``values`` ``[B, T]``
    the critic's values (None without a critic); ``tree_ids`` ``[B]`` the tree of each row under
    tree rollouts (None without)."""

    scores: Any
    group_ids: Any
    mask: Any
    token_rewards: Any
    values: Any = None
    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True
    norm_by_std: bool = True
    baseline: str = "batch-mean"
    tree_ids: Any = None


#: An advantage: inputs -> (advantages ``[B, T]``, returns ``[B, T]`` the critic learns, or None).
Advantage = Callable[[AdvantageInputs], tuple[Any, Any]]


@dataclass(frozen=True)
class Algorithm:
    name: str  # the value of train.algorithm
    title: str  # its name in tables and reports
    advantage: Advantage
    help: str  # one line: what its advantage is and where its KL goes
    needs_critic: bool = False
    needs_trees: bool = False  # its advantage reads the tree of each rollout: needs train.rollout_tree > 0
    group_based: bool = False  # its advantage compares the samples of one prompt: needs group_size >= 2
    # Where the KL goes by default. True: a penalty in the token rewards, which its advantage reads
    # (a setting may still move it to a loss). False: a loss term, always: its advantage reads the
    # outcome scores only, so a KL in the reward would never reach the policy.
    kl_in_reward: bool = False
    verl_name: str | None = None  # veRL's algorithm.adv_estimator; None = not exportable to veRL


def _ppo(x: AdvantageInputs):
    from .advantages import gae_advantages

    return gae_advantages(x.token_rewards, x.values, x.mask, x.gamma, x.lam, whiten=x.whiten)


def _grpo(x: AdvantageInputs):
    from .advantages import grpo_advantages

    return grpo_advantages(x.scores, x.group_ids, x.mask, x.norm_by_std)[0], None


def _rloo(x: AdvantageInputs):
    from .advantages import rloo_advantages

    return rloo_advantages(x.scores, x.group_ids, x.mask)[0], None


def _reinforce(x: AdvantageInputs):
    from .advantages import reinforce_advantages

    return reinforce_advantages(x.scores, x.mask, baseline=x.baseline)[0], None


def _reinforce_pp(x: AdvantageInputs):
    from .advantages import reinforce_pp_advantages

    return reinforce_pp_advantages(x.token_rewards, x.mask, x.gamma)[0], None  # no critic learns returns


def _tree_grpo(x: AdvantageInputs):
    from .advantages import tree_grpo_advantages

    if x.tree_ids is None:
        raise ValueError("tree_grpo needs tree rollouts (train.rollout_tree > 0): no tree ids in the batch")
    return tree_grpo_advantages(x.scores, x.group_ids, x.tree_ids, x.mask, x.norm_by_std)[0], None


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", "GRPO", _grpo, "group-normalised outcome advantages + KL loss to the reference",
              group_based=True, verl_name="grpo"),
    Algorithm("ppo", "PPO", _ppo, "critic + GAE, KL penalty in the reward",
              needs_critic=True, kl_in_reward=True, verl_name="gae"),
    Algorithm("rloo", "RLOO", _rloo, "leave-one-out group baseline + KL loss",
              group_based=True, verl_name="rloo"),
    Algorithm("reinforce", "REINFORCE", _reinforce,
              "REINFORCE, the outcome score less a baseline (the batch mean, or none) + KL loss, no critic"),
    Algorithm("reinforce_pp", "REINFORCE++", _reinforce_pp,
              "REINFORCE++, batch-whitened returns, KL penalty in the token rewards, no critic",
              kl_in_reward=True, verl_name="reinforce_plus_plus"),
    Algorithm("tree_grpo", "Tree-GRPO", _tree_grpo,
              "Tree-GRPO, a leaf's GRPO advantage within its tree plus within its prompt's trees (needs "
              "train.rollout_tree > 0) + KL loss", group_based=True, needs_trees=True),
)}


def algorithm(name: str) -> Algorithm:
    """The row of `name`; ValueError naming the choices when there is none."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}: one of {', '.join(ALGORITHMS)}") from None
