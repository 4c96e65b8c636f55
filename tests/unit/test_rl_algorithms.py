"""searchr1.rl.algorithms: each row's advantage is its pure function's, and the table (with the
settings that read it) imports no torch."""

import subprocess
import sys

import pytest
import torch

from searchr1.rl import (gae_advantages, grpo_advantages, reinforce_advantages, reinforce_pp_advantages,
                         rloo_advantages, tree_grpo_advantages)
from searchr1.rl.algorithms import ALGORITHMS, AdvantageInputs, algorithm

SCORES = torch.tensor([1.0, 0.0, 0.5, 0.5])
GROUPS = torch.tensor([0, 0, 1, 1])
TREES = torch.tensor([0, 1, 2, 2])
MASK = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 0]])
REWARDS = torch.tensor([[0.0, 0.1, 0.0, 1.0], [0.0, -0.2, 0.0, 0.0], [0.3, 0.0, 0.0, 0.5], [0.0, 0.5, 0.0, 0.0]])
VALUES = torch.tensor([[0.2, 0.1, 9.0, 0.4], [0.0, 0.3, 0.1, 9.0], [0.5, 9.0, 0.2, 0.1], [0.1, 0.2, 9.0, 9.0]])


def inputs(**kw):
    return AdvantageInputs(SCORES, GROUPS, MASK, REWARDS, VALUES, **kw)


@pytest.mark.parametrize("name, kw, expected", [
    ("grpo", {}, lambda: (grpo_advantages(SCORES, GROUPS, MASK)[0], None)),
    ("grpo", {"norm_by_std": False}, lambda: (grpo_advantages(SCORES, GROUPS, MASK, False)[0], None)),
    ("rloo", {}, lambda: (rloo_advantages(SCORES, GROUPS, MASK)[0], None)),
    ("reinforce", {}, lambda: (reinforce_advantages(SCORES, MASK, baseline="batch-mean")[0], None)),
    ("reinforce", {"baseline": "none"}, lambda: (reinforce_advantages(SCORES, MASK)[0], None)),
    ("reinforce_pp", {"gamma": 0.9}, lambda: (reinforce_pp_advantages(REWARDS, MASK, 0.9)[0], None)),
    ("ppo", {"gamma": 0.9, "lam": 0.8}, lambda: gae_advantages(REWARDS, VALUES, MASK, 0.9, 0.8, whiten=True)),
    ("ppo", {"whiten": False}, lambda: gae_advantages(REWARDS, VALUES, MASK, 1.0, 1.0)),
    ("tree_grpo", {"tree_ids": TREES}, lambda: (tree_grpo_advantages(SCORES, GROUPS, TREES, MASK)[0], None)),
])
def test_each_row_computes_its_pure_functions_advantage(name, kw, expected):
    got, want = ALGORITHMS[name].advantage(inputs(**kw)), expected()
    assert torch.equal(got[0], want[0])
    assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.equal(got[1], want[1]))


def test_the_table_says_what_each_algorithm_needs():
    assert list(ALGORITHMS) == ["grpo", "ppo", "rloo", "reinforce", "reinforce_pp", "tree_grpo"]
    assert [a.name for a in ALGORITHMS.values() if a.needs_critic] == ["ppo"]
    assert [a.name for a in ALGORITHMS.values() if a.group_based] == ["grpo", "rloo", "tree_grpo"]
    assert [a.name for a in ALGORITHMS.values() if a.needs_trees] == ["tree_grpo"]
    assert [a.name for a in ALGORITHMS.values() if a.kl_in_reward] == ["ppo", "reinforce_pp"]
    assert {a.name: a.verl_name for a in ALGORITHMS.values()} == {
        "grpo": "grpo", "ppo": "gae", "rloo": "rloo", "reinforce": None, "reinforce_pp": "reinforce_plus_plus",
        "tree_grpo": None}
    assert all(a.help and a.title for a in ALGORITHMS.values())
    assert algorithm("ppo") is ALGORITHMS["ppo"]
    with pytest.raises(ValueError, match="unknown algorithm 'dpo': one of grpo, ppo, rloo, reinforce, reinforce_pp"):
        algorithm("dpo")
    with pytest.raises(ValueError, match="tree rollouts"):
        ALGORITHMS["tree_grpo"].advantage(inputs())


def test_the_settings_and_the_table_import_no_torch():
    code = ("import sys, searchr1.settings, searchr1.rl.algorithms; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
