"""Supervised warm-up on search demonstrations, before RL (optional; `cfg.sft`, off by default).

A small instruct model never writes `<search>` / `<answer>` on its own, so RL from it has nothing
to reinforce. The warm-up shows the format: for synthetic training questions it plays the ideal
episode (`searchr1.data.warmup.demonstration`: one search per supporting passage, then the
answer) through the real `Agent` and retriever with a `ScriptedGenerator`, so each demonstration
has exactly the token layout and loss mask of an RL rollout, with real retrieved passages, in the
protocol the policy will use (`agent.protocol`: the paper's `<search>` tags, or the chat template's
tool calls, the final message ended by the policy's EOS). An episode is kept only when every search
retrieved the passage it was meant to find and the episode ended with the gold answer. Training
then minimises the negative log-likelihood of the mask-1 (policy) tokens only: injected
`<information>` blocks and tool messages are context, never targets.

    loss = - sum_t mask_t * log p(token_t | context) / sum_t mask_t      (per mini-batch, token mean)
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from searchr1.atomic import swap_in
from searchr1.data.warmup import demonstration, observations_support
from searchr1.errors import ConfigError
from searchr1.protocol import build_prompt
from searchr1.rewards import compute_score
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.scripted import ScriptedGenerator
from searchr1.train.batch import Batch, collate
from searchr1.toolcall import tools_for
from searchr1.train.models import sequence_logprobs


def masked_nll(policy, batch: Batch) -> tuple[torch.Tensor, int]:
    """(mean negative log-likelihood over the batch's loss-mask tokens, number of those tokens)."""
    out = sequence_logprobs(policy, batch.input_ids, batch.attention_mask, batch.response_start,
                            positions=batch.loss_mask)
    mask = batch.loss_mask.to(out.logprobs.dtype)
    n = int(batch.loss_mask.sum())
    if n == 0:
        return out.logprobs.sum() * 0.0, 0
    return -(out.logprobs * mask).sum() / mask.sum(), n


def play_demonstrations(cfg, tokenizer, retriever, questions: Sequence) -> tuple[list, int]:
    """(kept trajectories, number dropped): every question's ideal episode, played through the
    agent with the real retriever; kept when the observations support it and it answers right."""
    protocol = cfg.agent.protocol
    chat = cfg.model.use_chat_template
    tools = tools_for(protocol)
    trajs = [new_trajectory(tokenizer, build_prompt(q.question, tokenizer, template=cfg.agent.template, chat=chat,
                                                    tools=tools),
                            q.question, q.golden_answers, id=f"sft-{q.id}", group=i)
             for i, q in enumerate(questions)]
    scripts = [demonstration(q, protocol) for q in questions]
    if protocol == "tool_call":  # the final message ends as the policy must end it: with its own EOS
        if tokenizer.eos_token is None:
            raise ConfigError("the SFT warm-up under agent.protocol=tool_call needs a tokenizer with an EOS token")
        scripts = [s[:-1] + [s[-1] + tokenizer.eos_token] for s in scripts]
        if trajs and tokenizer.decode(trajs[0].prompt_ids).rstrip().endswith("<think>"):
            # a Qwen3-style template opens the thinking block itself (here and after every tool message)
            scripts = [[turn.removeprefix("<think> ") for turn in s] for s in scripts]
    if trajs:
        Agent(ScriptedGenerator(tokenizer, scripts), retriever, cfg.agent).run(trajs, SamplingParams(temperature=0))
    kept = [t for t, q in zip(trajs, questions)
            if t.stop_reason == "answer" and observations_support(t, q)
            and compute_score(t.response_text, t.golden_answers, protocol=protocol) >= 1.0]
    return kept, len(trajs) - len(kept)


def warmup(cfg, models_or_policy, tokenizer, retriever, questions: Sequence, console=None) -> dict:
    """Supervised warm-up of the policy (a `TrainModels` or a causal LM, trained in place) on
    demonstrations for `questions` (synthetic `Question`s with `support`). Returns metrics:
    steps, loss curve (per step), first/last loss, examples kept/dropped, tokens, seconds."""
    sc = cfg.sft
    policy = getattr(models_or_policy, "policy", models_or_policy)
    say = (lambda text: console.print(text, markup=False)) if console is not None else (lambda text: None)
    t0 = time.perf_counter()
    rng = random.Random(cfg.train.seed)
    chosen = list(questions)
    if len(chosen) > sc.examples:
        chosen = rng.sample(chosen, sc.examples)
    kept, dropped = play_demonstrations(cfg, tokenizer, retriever, chosen)
    result = {"steps": 0, "losses": [], "kept": len(kept), "dropped": dropped, "tokens": 0,
              "first_loss": None, "last_loss": None, "seconds": 0.0}
    if sc.steps == 0 or not kept:
        if sc.steps and not kept:
            say("sft: no demonstration retrieved its passages; warm-up skipped")
        result["seconds"] = time.perf_counter() - t0
        return result
    say(f"sft: {len(kept)} demonstrations ({dropped} dropped), {sc.steps} steps of {sc.batch_size}, lr {sc.lr}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(policy.parameters()).device
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sc.lr, weight_decay=cfg.train.optim.weight_decay)
    max_norm = cfg.train.optim.max_grad_norm if cfg.train.optim.max_grad_norm > 0 else float("inf")
    micro = max(1, cfg.train.micro_batch_size)
    order: list[int] = []
    was_training = policy.training
    policy.train(True)
    try:
        for step in range(1, sc.steps + 1):
            if len(order) < sc.batch_size:  # a fresh shuffled epoch
                epoch = list(range(len(kept)))
                rng.shuffle(epoch)
                order += epoch
            idx, order = order[:sc.batch_size], order[sc.batch_size:]
            batch = collate([kept[i] for i in idx], pad_id, mask_retrieved=True).to(device)
            total = float(batch.loss_mask.sum())
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for rows in torch.arange(batch.size, device=device).split(micro):
                mb = batch.rows(rows)
                loss, n = masked_nll(policy, mb)
                if n == 0:
                    continue
                (loss * (n / total)).backward()
                loss_sum += float(loss.detach()) * n / total
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if torch.isfinite(norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result["losses"].append(loss_sum)
            result["tokens"] += int(total)
            result["steps"] = step
            say(f"sft: step {step}/{sc.steps} loss {loss_sum:.4f}")
    finally:
        policy.train(was_training)
    result["first_loss"], result["last_loss"] = result["losses"][0], result["losses"][-1]
    result["seconds"] = time.perf_counter() - t0
    return result


def save_model(model, tokenizer, out_dir: Path) -> Path:
    """`save_pretrained` of the warmed-up model and its tokenizer into `out_dir`, atomically (a
    temporary directory swapped into place), so a reader never sees half a model."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    swap_in(tmp, out_dir)
    return out_dir
