"""One `Learner.learn()` update on fixed trajectories, alone or as one rank of `torchrun`: writes the
trained parameters (rank 0) so that tests/e2e/test_distributed.py can compare 1 vs 2 processes.

    python dp_worker.py OUT.pt                      # one process, the whole batch
    torchrun --standalone --nproc_per_node 2 dp_worker.py OUT.pt
"""

import random
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from searchr1.config import deep_merge, from_dict
from searchr1.rollout.trajectory import Trajectory
from searchr1.train.distributed import DataParallel, resolve_sharding
from searchr1.train.models import build_models
from searchr1.train.settings import TrainConfig
from searchr1.train.batch import collate
from searchr1.train.learner import Learner

VOCAB = 40
# name -> TrainConfig overrides; 4 prompts x 4 rollouts = 16 trajectories, mini-batches of 8 (two
# optimizer steps an epoch), micro-batches of 2 (two accumulation steps per rank and mini-batch)
LORA = {"r": 4, "targets": ["q_proj", "v_proj"]}
CASES = {
    "grpo": dict(algorithm="grpo", ppo_epochs=2),
    "grpo-seq-mean": dict(algorithm="grpo", loss={"agg": "seq-mean-token-mean"}),
    # one optimizer step: old log-probs come from the update's own forward, their metrics per rank
    "grpo-one-step": dict(algorithm="grpo", mini_batch_size=16),
    "ppo-critic": dict(algorithm="ppo", critic="separate"),
    "ppo-head-lora": dict(algorithm="ppo", critic="head", lora=LORA),
    "ppo-critic-zero1": dict(algorithm="ppo", critic="separate", compute={"sharding": "zero1"}),
    # FSDP2: parameters, gradients and optimizer state sharded; the frozen reference sharded too
    "grpo-zero3": dict(algorithm="grpo", ppo_epochs=2, compute={"sharding": "zero3"}),
    "grpo-zero2": dict(algorithm="grpo", compute={"sharding": "zero2"}),
    "ppo-critic-zero3": dict(algorithm="ppo", critic="separate", compute={"sharding": "zero3"}),
    "ppo-head-lora-zero3": dict(algorithm="ppo", critic="head", lora=LORA, compute={"sharding": "zero3"}),
    # recomputation in the backward (activation checkpointing, the chunked LM head) under FSDP
    "grpo-zero3-recompute": dict(algorithm="grpo", compute={"sharding": "zero3", "gradient_checkpointing": True,
                                                            "logits_chunk": 3}),
    "grpo-lora-zero3-recompute": dict(algorithm="grpo", compute={"sharding": "zero3", "gradient_checkpointing": True},
                                      lora=LORA),
}


def config(case: str, **extra) -> TrainConfig:
    settings = dict(prompts_per_step=4, group_size=4, mini_batch_size=8, micro_batch_size=2, kl={"coef": 0.01})
    return from_dict(TrainConfig, deep_merge(deep_merge(settings, extra), CASES[case]))


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        pad_token_id=0, eos_token_id=1, tie_word_embeddings=False))


def trajectories(n_prompts: int, group: int) -> tuple[list[Trajectory], torch.Tensor]:
    """Uneven lengths, generated and injected (mask-0) runs, rewards that differ within groups."""
    rng = random.Random(0)
    out, scores = [], []
    for g in range(n_prompts):
        prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randint(3, 7))]
        for k in range(group):
            t = Trajectory(question=f"q{g}", golden_answers=["x"], prompt_ids=prompt, id=f"{g}#{k}", group=g)
            for _ in range(rng.randint(1, 3)):
                ids = [rng.randrange(2, VOCAB) for _ in range(rng.randint(2, 5))]
                t.append(ids, 1, [-rng.uniform(1.0, 4.0) for _ in ids])
                t.append([rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 4))], 0)
            out.append(t)
            scores.append(float(rng.random() < 0.5) + 0.1 * k)
    return out, torch.tensor(scores)


def _whole(module, dist: DataParallel, trainable_only: bool = False) -> dict:
    """Parameters as whole tensors (gathered from the shards under FSDP; every rank must call)."""
    full = dist.full_state_dict(module)
    names = [k for k, p in module.named_parameters() if p.requires_grad or not trainable_only]
    if full is None and dist.sharded:
        return {}  # not rank 0
    if full is None:
        full = dict(module.named_parameters())
    return {k: full[k].detach().clone() for k in names}


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    group = DataParallel.from_env("cpu")
    result = {}
    for name, overrides in CASES.items():
        tc = config(name, optim={"lr": 0.5, "critic_lr": 0.5, "max_grad_norm": 0.0})
        dist = DataParallel(group.accelerator, resolve_sharding(tc.compute.sharding, {}))
        models = build_models(tiny_llama(), tc)
        models.distribute(dist)
        # SGD: parameters move linearly with the gradient, so a wrong gradient scale shows directly
        learner = Learner(models, tc, dist, optimizer_cls=torch.optim.SGD, weight_decay=0.0)
        trajs, scores = trajectories(tc.prompts_per_step, tc.group_size)
        metrics = learner.learn(collate(trajs, 0), scores, step=1)
        state = {f"policy.{k}": v for k, v in _whole(models.policy, dist, trainable_only=True).items()}
        if models.critic is not None:
            state.update({f"critic.{k}": v for k, v in _whole(models.critic, dist).items()})
        result[name] = {"params": state, "metrics": metrics}
    if dist.is_main:
        torch.save(result, out_path)
    del models, learner  # DDP must go before its process group
    group.close()


if __name__ == "__main__":
    main(sys.argv[1])
