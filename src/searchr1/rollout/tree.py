"""Tree rollouts (Tree-GRPO, Ji et al. 2025): branches grown from the step boundaries of chains.

A node of a tree is one agent step: a turn the policy generated and the `<information>` block (or
note) the environment answered it with. Per question the trainer first plays M chains as usual
(each the first path of its own tree), then `expansions` picks, per tree, N step boundaries of its
chain at random and copies the chain up to each one: the copy keeps the chain's exact tokens, masks
and sampler log-probs up to there, and its turns, and the agent plays it on from there as a new row
(`searchr1.rollout.agent.Agent.run` continues a trajectory that already has a response). Every leaf
(the chain and each expansion) is then a rollout of its own: it is scored, and trained on its whole
path, the shared prefix included (so a prefix is trained once per leaf below it).

A boundary is the end of a non-final step, i.e. where the next turn starts. A chain of one step has
none: its tree's expansions then start from the root (the prompt), which makes them independent
chains, so every tree keeps 1 + N leaves.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from searchr1.rollout.trajectory import Trajectory

__all__ = ["branch", "expansions", "step_boundaries"]


def step_boundaries(traj: Trajectory) -> list[tuple[int, int]]:
    """``(response tokens, turns)`` at the end of each of `traj`'s steps but the last: where a
    branch may start. The response before the first turn (a forced prefix) belongs to the root."""
    pos = len(traj.response_ids) - sum(t.generated_tokens + t.observation_tokens for t in traj.turns)
    out = []
    for k, turn in enumerate(traj.turns[:-1], start=1):
        pos += turn.generated_tokens + turn.observation_tokens
        out.append((pos, k))
    return out


def branch(traj: Trajectory, tokens: int, turns: int, id: str) -> Trajectory:
    """A live copy of `traj` cut after its first `turns` turns (`tokens` response tokens): same
    prompt, group and tree, the response's ids, policy mask and log-probs up to there."""
    return dataclasses.replace(
        traj, response_ids=traj.response_ids[:tokens], policy_mask=traj.policy_mask[:tokens],
        logprobs=traj.logprobs[:tokens], turns=[dataclasses.replace(t, doc_ids=list(t.doc_ids))
                                                for t in traj.turns[:turns]],
        answer=None, stop_reason=None, response_text="", id=id, meta={**traj.meta, "branched_at_turn": turns})


def expansions(chains: Sequence[Trajectory], per_tree: int, rng: random.Random) -> list[Trajectory]:
    """`per_tree` branches of each finished chain, from boundaries drawn uniformly with replacement
    (two branches of one node are siblings); ids ``<chain id>/<j>``."""
    out = []
    for chain in chains:
        if not chain.done:
            raise ValueError(f"chain {chain.id!r} has not ended: branches grow from finished chains")
        prefix = len(chain.response_ids) - sum(t.generated_tokens + t.observation_tokens for t in chain.turns)
        nodes = step_boundaries(chain) or [(prefix, 0)]
        for j in range(per_tree):
            tokens, turns = rng.choice(nodes)
            out.append(branch(chain, tokens, turns, f"{chain.id}/{j}"))
    return out
