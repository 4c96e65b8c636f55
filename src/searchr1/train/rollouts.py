"""A training step's scored rollouts: which questions, the episodes, their rewards.

    questions  the next prompts_per_step of a seeded shuffle (`PromptSampler`; its position is checkpointed)
    episodes   group_size per question, played by the `Agent` with the policy itself; under data
               parallelism each rank plays its share of whole groups, then all ranks get all of them
    rewards    reward_fn(trajectory) (default: exact match, optionally format-shaped), plus DAPO's
               overlong penalty when `train.dapo.overlong=penalty`
    dynamic    with `train.dapo.dynamic_sampling`, groups whose rewards are all equal are set aside and
               more questions are drawn, up to `dynamic_sampling_max_rounds` rounds (DAPO)
    trees      with `train.rollout_tree` = M, a question's group_size episodes are M trees: M chains
               first, then the branches of each (`searchr1.rollout.tree`), each leaf a rollout
    budget     the stats count what the step's rollouts cost: the tokens the policy generated and the
               searches it ran (a branch costs only what it generated past its shared prefix)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch

from searchr1.errors import SearchR1Error
from searchr1.eval.metrics import aggregate
from searchr1.protocol import build_prompt
from searchr1.rewards import compute_score, retrieved_gold
from searchr1.rl import informative_groups, overlong_penalty
from searchr1.rollout.agent import Agent, RolloutStats, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.tree import expansions
from searchr1.rollout.trajectory import Trajectory
from searchr1.toolcall import tools_for
from searchr1.train.batch import Batch

RewardFn = Callable[[Trajectory], float]


class PromptSampler:
    """Seeded epochs of shuffled question indices; `state_dict()` is the data position."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise SearchR1Error("no training questions")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n:
            raise SearchR1Error(f"the checkpoint was trained on {state.get('n')} questions, this config gives "
                                f"{self.n}: resume needs the same training data")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def make_trajectories(rows: Sequence[dict], tokenizer, template: str, chat: bool | None,
                      group_size: int, first_group: int = 0, tools: list | None = None) -> list[Trajectory]:
    """group_size fresh episodes per row, all of one row sharing `group` = first_group + the row's
    position; `tools`: the chat template's tool list (`toolcall.tools_for(agent.protocol)`)."""
    out = []
    for g, row in enumerate(rows, start=first_group):
        prompt = build_prompt(row["question"], tokenizer, template=template, chat=chat, tools=tools)
        for k in range(group_size):
            out.append(new_trajectory(tokenizer, prompt, row["question"], row["golden_answers"],
                                      id=f"{row['id']}#{k}", group=g,
                                      meta={"data_source": row.get("data_source", "")}))
    return out


# ----------------------------------------------------------------------------- rewards


def default_reward_fn(format_reward: bool, retrieval_score: float = 0.0,
                      format_needs_search: bool = False) -> RewardFn:
    def reward(traj: Trajectory) -> float:
        return float(compute_score(traj.response_text, traj.golden_answers, format_reward=format_reward,
                                   retrieval_score=retrieval_score, format_needs_search=format_needs_search,
                                   protocol=traj.meta.get("protocol", "tags")))

    return reward


def score_trajectories(trajectories: Sequence[Trajectory], reward_fn: RewardFn) -> torch.Tensor:
    """``[B]`` float32 rewards; a non-finite or non-numeric reward is an error naming the trajectory."""
    scores = []
    for t in trajectories:
        value = reward_fn(t)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SearchR1Error(f"reward_fn returned {value!r} for trajectory {t.id!r}; expected a number") from None
        if not math.isfinite(value):
            raise SearchR1Error(f"reward_fn returned {value} for trajectory {t.id!r}")
        scores.append(value)
    return torch.tensor(scores, dtype=torch.float32)


def rollout_metrics(trajs: Sequence[Trajectory], batch: Batch, scores: torch.Tensor) -> dict[str, float]:
    """What the step's episodes did; the behaviour counts are evaluation's own aggregate."""
    n = len(trajs)
    episodes = aggregate(trajs)
    response_tokens = float(batch.response_mask.sum())
    generated = float(batch.policy_mask.sum())
    return {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if n > 1 else 0.0,
        "reward/em": episodes["em"],
        "rollout/searches_per_traj": episodes["searches"],
        "rollout/invalid_rate": episodes["invalid_rate"],
        "rollout/answered": episodes["answered"],
        # the share whose passages held a gold answer (what train.retrieval_score pays, valid or not)
        "rollout/retrieved_gold": sum(retrieved_gold(t.response_text, t.golden_answers, t.meta.get("protocol", "tags"))
                                      for t in trajs) / n,
        "rollout/truncated": float(batch.truncated.float().mean()),
        "rollout/response_length": response_tokens / n,
        "rollout/generated_length": generated / n,
        "rollout/masked_share": 1.0 - float(batch.loss_mask.sum()) / response_tokens if response_tokens else 0.0,
        "rollout/injected_share": 1.0 - generated / response_tokens if response_tokens else 0.0,
    }


# ----------------------------------------------------------------------------- one step's rollouts


@dataclass
class StepRollouts:
    trajectories: list[Trajectory]
    scores: torch.Tensor  # [B] the rewards the learner sees (overlong penalty included)
    stats: RolloutStats  # summed over the rounds
    metrics: dict[str, float] = field(default_factory=dict)


def _add_stats(total: RolloutStats, more: RolloutStats) -> None:
    for f in fields(RolloutStats):
        setattr(total, f.name, getattr(total, f.name) + getattr(more, f.name))


def _groups(trajs: Sequence[Trajectory], scores: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """(groups with signal, groups without): each group the indices of its trajectories, in rollout order."""
    keep = informative_groups(scores, [t.group for t in trajs])
    by_group: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        by_group.setdefault(t.group, []).append(i)
    kept, dropped = [], []
    for rows in by_group.values():
        (kept if bool(keep[rows[0]]) else dropped).append(rows)
    return kept, dropped


class RolloutCollector:
    """Plays and scores a step's episodes with `agent` (whose generator samples from the policy).

    `gathered` is the context in which the policy's weights are whole for generation (sharded
    runs all-gather them once; `searchr1.train.distributed`). `pool_for(trajectories)` gives the
    episodes live at once (default: `tc.sampling.pool`; the trainer bounds it by a memory budget)."""

    def __init__(self, agent: Agent, tokenizer, rows: Sequence[dict], sampler: PromptSampler, tc, chat,
                 reward_fn: RewardFn, max_response_tokens: int, dist, gathered: Callable,
                 pool_for: Callable[[list[Trajectory]], int] | None = None) -> None:
        self.agent, self.tokenizer, self.rows, self.sampler, self.tc = agent, tokenizer, rows, sampler, tc
        self.chat, self.reward_fn, self.max_response_tokens = chat, reward_fn, max_response_tokens
        self.dist, self.gathered = dist, gathered
        self.pool_for = pool_for or (lambda trajs: tc.sampling.pool or len(trajs))

    def score(self, trajs: Sequence[Trajectory]) -> torch.Tensor:
        scores = score_trajectories(trajs, self.reward_fn)
        tc = self.tc
        if tc.dapo.overlong == "penalty":
            lengths = torch.tensor([len(t.response_ids) for t in trajs])
            scores = scores + overlong_penalty(lengths, self.max_response_tokens, tc.dapo.overlong_buffer,
                                               tc.dapo.overlong_factor)
        return scores

    def _round(self, step: int, round_: int) -> tuple[list[Trajectory], RolloutStats]:
        tc, dist = self.tc, self.dist
        batch_rows = [self.rows[i] for i in self.sampler.take(tc.prompts_per_step)]
        mine = dist.shard(len(batch_rows))
        trees = tc.rollout_tree
        trajs = make_trajectories(batch_rows[mine], self.tokenizer, self.agent.cfg.template, self.chat,
                                  trees or tc.group_size, round_ * tc.prompts_per_step + mine.start,
                                  tools=tools_for(self.agent.cfg.protocol))
        seed = tc.seed * 1_000_003 + step + dist.rank * 1_000_000_007 + round_ * 1_000_000_000_039

        def play(episodes: list[Trajectory], seed: int) -> RolloutStats:
            params = SamplingParams(temperature=tc.sampling.temperature, top_p=tc.sampling.top_p, seed=seed)
            return self.agent.run(episodes, params, pool=self.pool_for(episodes))

        with self.gathered():
            stats = play(trajs, seed)
            if trees:
                for k, t in enumerate(trajs):
                    t.tree = t.group * trees + k % trees
                branches = expansions(trajs, tc.group_size // trees - 1, random.Random(seed))
                _add_stats(stats, play(branches, seed + 1))
                trajs = trajs + branches
        return dist.gather_objects(trajs), stats

    def collect(self, step: int) -> StepRollouts:
        tc = self.tc
        trajs, stats = self._round(step, 0)
        scores = self.score(trajs)
        if not tc.dapo.dynamic_sampling:
            return StepRollouts(trajs, scores, stats)
        kept, dropped = _groups(trajs, scores)
        rounds = 1
        while len(kept) < tc.prompts_per_step and rounds < tc.dapo.max_rounds:
            more, more_stats = self._round(step, rounds)
            rounds += 1
            _add_stats(stats, more_stats)
            more_scores = self.score(more)
            k, d = _groups(more, more_scores)
            offset = len(trajs)
            kept += [[offset + i for i in g] for g in k]
            dropped += [[offset + i for i in g] for g in d]
            trajs, scores = trajs + more, torch.cat([scores, more_scores])
        informative = min(len(kept), tc.prompts_per_step)
        # A batch short of groups with signal is completed with groups without, so every step has
        # the configured shape (their advantages are 0 under grpo / rloo).
        chosen = [i for group in (kept + dropped)[:tc.prompts_per_step] for i in group]
        metrics = {"dynamic/rounds": float(rounds), "dynamic/prompts_drawn": float(rounds * tc.prompts_per_step),
                   "dynamic/informative_groups": float(informative),
                   "dynamic/filled": float(informative == tc.prompts_per_step)}
        return StepRollouts([trajs[i] for i in chosen], scores[chosen], stats, metrics)
