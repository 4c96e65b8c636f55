"""Model wiring: response-only log-probs match a plain forward, critics, reference, LoRA."""

import dataclasses

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from searchr1.train.batch import collate
from searchr1.train.learner import Learner
from searchr1.train.models import build_models, causal_lm, sequence_logprobs
from searchr1.train.settings import ComputeConfig, KLConfig, LoRAConfig, LossConfig, OptimConfig, TrainConfig
from searchr1.rollout.trajectory import Trajectory

torch.set_num_threads(1)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                        pad_token_id=0, eos_token_id=1, bos_token_id=None)).eval()


def _traj(prompt, response, mask):
    t = Trajectory(question="q", golden_answers=[], prompt_ids=prompt)
    for tok, m in zip(response, mask):
        t.append([tok], m)
    return t


def _reference_logprobs(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_sequence_logprobs_match_an_unpadded_forward():
    model = tiny_llama()
    trajs = [_traj([3, 4, 5, 6], [7, 8, 9], [1, 0, 1]), _traj([10], [11, 12, 13, 14, 15], [1] * 5)]
    batch = collate(trajs, pad_id=0)
    with torch.no_grad():
        out = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_start,
                                temperature=0.7, with_entropy=True)
    assert out.logprobs.shape == (2, 5) and out.entropy.shape == (2, 5)
    for i, t in enumerate(trajs):
        want = _reference_logprobs(model, t.prompt_ids, t.response_ids, 0.7)
        torch.testing.assert_close(out.logprobs[i, :len(want)], want, atol=1e-5, rtol=1e-5)


def test_head_at_positions_gives_the_same_logprobs_entropy_and_gradients_there_and_zeros_elsewhere():
    model = tiny_llama()
    trajs = [_traj([3, 4, 5, 6], [7, 8, 9, 20, 21], [1, 0, 0, 1, 1]), _traj([10], [11, 12, 13], [0, 1, 1])]
    batch = collate(trajs, pad_id=0)
    where = batch.policy_mask.bool()

    def run(positions, chunk):
        model.zero_grad(set_to_none=True)
        out = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_start,
                                temperature=0.7, with_entropy=True, logits_chunk=chunk, positions=positions)
        ((out.logprobs + 0.5 * out.entropy) * where).sum().backward()
        return out, [p.grad.clone() for p in model.parameters()]

    full, full_grads = run(None, 0)
    for chunk in (0, 2):
        some, some_grads = run(where, chunk)
        torch.testing.assert_close(some.logprobs[where], full.logprobs[where], atol=1e-6, rtol=0)
        torch.testing.assert_close(some.entropy[where], full.entropy[where], atol=1e-6, rtol=0)
        assert torch.all(some.logprobs[~where] == 0) and torch.all(some.entropy[~where] == 0)
        for a, b in zip(some_grads, full_grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    try:
        sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_start, positions=where[:, :2])
    except ValueError as e:
        assert "must match the response" in str(e)
    else:
        raise AssertionError("a positions mask of the wrong shape was accepted")


def test_batch_scored_covers_the_loss_mask_and_the_generated_tokens():
    batch = collate([_traj([3], [7, 8, 9], [1, 0, 1]), _traj([4], [5], [1])], pad_id=0, mask_retrieved=False)
    assert batch.scored.tolist() == [[True, True, True], [True, False, False]]
    excluded = batch.excluding(torch.tensor([True, False]))  # a row the trainer drops from the loss
    assert excluded.scored.tolist() == [[True, False, True], [True, False, False]]  # its generated tokens stay


def test_full_finetune_reference_is_a_frozen_copy_and_separate_critic_starts_at_zero():
    model = tiny_llama()
    m = build_models(model, TrainConfig(algorithm="ppo", group_size=1, prompts_per_step=4, mini_batch_size=4))
    assert m.reference is not m.policy and not any(p.requires_grad for p in m.reference.parameters())
    assert m.critic is not None and not m.shared_critic
    assert m.critic.trunk is not causal_lm(m.policy).model  # its own copy
    ids = torch.tensor([[3, 4, 5, 6]])
    values = m.critic(ids, torch.ones_like(ids), 2)
    assert values.shape == (1, 2) and torch.all(values == 0)


def test_head_critic_shares_the_policy_trunk():
    m = build_models(tiny_llama(), TrainConfig(algorithm="ppo", group_size=1, prompts_per_step=4, mini_batch_size=4,
                                               critic="head", kl=KLConfig(coef=0)))
    assert m.shared_critic and isinstance(m.critic, torch.nn.Linear) and m.reference is None
    ids = torch.tensor([[3, 4, 5, 6]])
    out = sequence_logprobs(m.policy, ids, torch.ones_like(ids), 1, value_head=m.critic)
    assert out.values.shape == (1, 3)


def test_lora_reference_is_the_policy_with_the_adapter_disabled():
    model = tiny_llama()
    m = build_models(model, TrainConfig(lora=LoRAConfig(r=4, targets=["q_proj", "v_proj"])))
    assert m.lora and m.reference is m.policy
    trainable = [n for n, p in m.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter do something
        for n, p in m.policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    attn = torch.ones_like(ids)
    with torch.no_grad():
        pol = sequence_logprobs(m.policy, ids, attn, 2).logprobs
        with m.reference_context():
            ref = sequence_logprobs(m.reference, ids, attn, 2).logprobs
        base = tiny_llama()
        want = sequence_logprobs(base, ids, attn, 2).logprobs
    torch.testing.assert_close(ref, want)
    assert not torch.allclose(pol, ref)


def test_resolve_precision():
    from searchr1.train.models import resolve_precision

    assert resolve_precision("auto", "cpu", cpu_bf16=False) == ("float32", None)
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == ("float32", torch.bfloat16)
    assert resolve_precision("auto", "cuda:1", cpu_bf16=False) == ("float32", torch.bfloat16)
    assert resolve_precision("auto", "mps", cpu_bf16=True) == ("float32", None)
    assert resolve_precision("auto", "cuda:1") == ("float32", torch.bfloat16)
    assert resolve_precision("bf16-mixed", "cpu") == ("float32", torch.bfloat16)
    assert resolve_precision("bf16", "cuda") == ("bfloat16", None)
    assert resolve_precision("fp32", "cuda") == ("float32", None)


def _one_update(model, autocast_dtype, lr):
    """One GRPO update of `model` at `lr`; returns (parameters before, after, the TrainModels)."""
    tc = TrainConfig(prompts_per_step=1, group_size=2, mini_batch_size=2, micro_batch_size=2, optim=OptimConfig(lr=lr),
                     kl=KLConfig(coef=0.01))
    models = build_models(model, tc, autocast_dtype)
    before = {n: p.detach().clone() for n, p in models.policy.named_parameters()}
    learner = Learner(models, tc, weight_decay=0.0)
    trajs = [_traj([3, 4, 5], [6, 7, 8, 9], [1, 1, 0, 1]), _traj([3, 4, 5], [9, 8, 7, 6], [1, 0, 1, 1])]
    for t in trajs:
        t.group = 0
    learner.learn(collate(trajs, 0), torch.tensor([1.0, 0.0]), step=1)
    after = {n: p.detach().clone() for n, p in models.policy.named_parameters()}
    return before, after, models


def test_bf16_mixed_keeps_fp32_master_weights_that_take_small_updates():
    # The paper's lr 1e-6 on weights of size ~0.02 is below bf16's resolution there (~1e-4): pure bf16
    # weights hardly move, fp32 master weights under bf16 autocast do.
    before, after, models = _one_update(tiny_llama(), torch.bfloat16, lr=1e-6)
    assert all(p.dtype == torch.float32 for p in after.values())
    # the frozen copy keeps fp32 weights and computes under the same autocast: an honest step-0 KL
    assert models.reference.dtype == torch.float32
    assert _changed_share(before, after) > 0.9  # measured 0.95 (the rest: entries with zero gradient)
    with models.compute():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")

    before, after, _ = _one_update(tiny_llama().to(torch.bfloat16), None, lr=1e-6)
    assert _changed_share(before, after) < 0.05  # measured 0.018: only entries near 0 can move


def _changed_share(before, after) -> float:
    changed = sum(int((before[n] != after[n]).sum()) for n in before)
    return changed / sum(t.numel() for t in before.values())


def test_single_step_grpo_takes_the_same_update_without_recomputing_old_logprobs():
    from searchr1.rl import grpo_advantages
    tc = TrainConfig(prompts_per_step=1, group_size=2, mini_batch_size=2, micro_batch_size=1, optim=OptimConfig(lr=0.5),
                     kl=KLConfig(coef=0.01))
    trajs = [_traj([3, 4, 5], [6, 7, 8, 9], [1, 1, 0, 1]), _traj([3, 4, 5], [9, 8, 7, 6], [1, 0, 1, 1])]
    scores = torch.tensor([1.0, 0.0])
    runs = []
    for recompute in (True, False):
        models = build_models(tiny_llama(), tc)
        learner = Learner(models, tc, optimizer_cls=torch.optim.SGD, weight_decay=0.0)
        batch = collate(trajs, 0)
        old = learner.forward(batch, "policy") if recompute else None
        ref = learner.forward(batch, "reference")
        adv, _ = grpo_advantages(scores, batch.group_ids, batch.loss_mask)
        stats = learner.update(dataclasses.replace(batch, old_logprobs=old, ref_logprobs=ref, advantages=adv), step=1)
        runs.append(({n: p.detach().clone() for n, p in models.policy.named_parameters()}, stats))
    (recomputed, _), (reused, stats) = runs
    moved = max((recomputed[n] - dict(tiny_llama().named_parameters())[n]).abs().max().item() for n in recomputed)
    assert moved > 1e-3
    for n in recomputed:
        torch.testing.assert_close(reused[n], recomputed[n], atol=1e-7, rtol=0)
    assert stats["rollout/logprob_diff"] > 0  # _traj's sampling log-probs are 0: a real comparison
    assert "actor/kl" in stats
    # learn() takes that path by itself for one epoch with one mini-batch, and still reports both
    models = build_models(tiny_llama(), tc)
    metrics = Learner(models, tc, optimizer_cls=torch.optim.SGD, weight_decay=0.0).learn(collate(trajs, 0), scores,
                                                                                         step=1)
    assert {"rollout/logprob_diff", "actor/kl", "actor/pg_loss"} <= metrics.keys()


def test_chunked_lm_head_gives_the_same_values_and_gradients():
    from searchr1.train.models import chunked_token_stats, token_stats

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    weights = torch.randn(3, 7)  # a loss that weighs every position differently

    def grads(fn):
        head.zero_grad()
        hidden.grad = None
        logp, entropy = fn()
        ((logp * weights).sum() + 0.1 * (entropy * weights).sum()).backward()
        return logp.detach(), entropy.detach(), hidden.grad.clone(), head.weight.grad.clone()

    whole = grads(lambda: token_stats(head, hidden, targets, 0.7, with_entropy=True))
    for chunk in (1, 3, 7, 100):  # 3 does not divide the 7 positions
        parts = grads(lambda: chunked_token_stats(head, hidden, targets, chunk, 0.7, with_entropy=True))
        for a, b in zip(whole, parts):
            assert torch.allclose(a, b, atol=1e-6), chunk
    # the metric-only entropy (no graph) comes out the same too
    with torch.no_grad():
        logp, entropy = chunked_token_stats(head, hidden, targets, 3, 0.7, with_entropy=True, entropy_grad=False)
    assert torch.allclose(logp, whole[0], atol=1e-6) and torch.allclose(entropy, whole[1], atol=1e-6)


def test_a_chunked_training_update_matches_the_unchunked_one():
    params = []
    for chunk in (0, 2):
        tc = TrainConfig(algorithm="grpo", prompts_per_step=2, group_size=2, mini_batch_size=4, micro_batch_size=2,
                         optim=OptimConfig(lr=0.1), kl=KLConfig(coef=0.01), loss=LossConfig(entropy_coef=0.01),
                         compute=ComputeConfig(logits_chunk=chunk))
        models = build_models(tiny_llama(), tc)
        assert models.policy_forward.logits_chunk == chunk and models.reference_forward.logits_chunk == chunk
        learner = Learner(models, tc, optimizer_cls=torch.optim.SGD, weight_decay=0.0)
        trajs = [_traj([3, 4, 5], [7, 8, 9, 10, 11], [1, 1, 0, 1, 1]), _traj([3, 4, 5], [12, 13, 14], [1, 1, 1]),
                 _traj([6, 7], [15, 16, 17, 18], [1, 0, 0, 1]), _traj([6, 7], [19, 20], [1, 1])]
        for i, t in enumerate(trajs):
            t.group = i // 2
        learner.learn(collate(trajs, 0), torch.tensor([1.0, 0.0, 0.0, 1.0]), step=1)
        params.append(torch.cat([p.detach().flatten() for p in models.policy.parameters()]))
    initial = torch.cat([p.detach().flatten() for p in tiny_llama().parameters()])
    assert (params[0] - initial).abs().max() > 1e-3  # the update moved the weights
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_gradient_checkpointing_is_switched_on():
    for lora in (0, 4):
        tc = TrainConfig(algorithm="grpo", group_size=2, prompts_per_step=2, mini_batch_size=4,
                         lora=LoRAConfig(r=lora, targets=["q_proj"]),
                         compute=ComputeConfig(gradient_checkpointing=True))
        lm = causal_lm(build_models(tiny_llama(), tc).policy)
        on = getattr(lm, "is_activation_checkpointing", None)
        assert (on if on is not None else lm.is_gradient_checkpointing) is True


def _casts(model, ids) -> int:
    """aten::_to_copy calls (dtype casts) in one forward of `model` over `ids`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")


def test_generation_casts_frozen_weights_once_under_bf16_with_the_same_outputs():
    m = build_models(tiny_llama(), TrainConfig(lora=LoRAConfig(r=4, targets=["q_proj", "v_proj"])),
                     autocast_dtype=torch.bfloat16)
    with torch.no_grad():
        for n, p in m.policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    frozen = {n for n, p in m.policy.named_parameters() if not p.requires_grad}
    assert frozen
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad(), m.compute():  # what generation did before: autocast alone
        plain = [m.policy(input_ids=ids).logits for _ in range(2)]
        plain_casts = _casts(m.policy, ids)
    with m.generation():
        first = m.policy(input_ids=ids).logits
        cached_casts = _casts(m.policy, ids)  # the second forward in the region: casts come from the cache
        second = m.policy(input_ids=ids).logits
        assert not torch.is_grad_enabled()
    # the same casts, so the same outputs, bit for bit
    assert torch.equal(first, plain[0]) and torch.equal(second, plain[1])
    # each frozen Linear weight (the 7 projections of each layer, LoRA's base layers among them, and
    # the LM head) was cast again at every forward; now none is
    frozen_linears = sum(isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad
                         for mod in m.policy.modules())
    assert frozen_linears == 2 * 7 + 1
    assert plain_casts - cached_casts == frozen_linears
    assert {n for n, p in m.policy.named_parameters() if not p.requires_grad} == frozen  # flags restored
    assert all(p.grad is None for p in m.policy.parameters())


def test_generation_without_autocast_or_with_the_cache_off_leaves_flags_alone():
    m = build_models(tiny_llama(), TrainConfig(lora=LoRAConfig(r=4, targets=["q_proj"])))
    frozen = [p for p in m.policy.parameters() if not p.requires_grad]
    with m.generation():
        assert not torch.is_grad_enabled()
        assert all(not p.requires_grad for p in frozen)  # fp32: nothing to cast, nothing marked
    m.autocast_dtype = torch.bfloat16
    with m.generation(cache_frozen_casts=False):
        assert all(not p.requires_grad for p in frozen)
