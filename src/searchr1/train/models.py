"""Model wiring for training: policy (optionally LoRA), reference, critic, and the forward passes
that give per-token log-probs, entropies and values over the RESPONSE positions only.

Sequence layout used everywhere in training (see `searchr1.train.batch`):

    input_ids = [ prompt, left-padded to P | response, right-padded to T ]

so every row's response starts at column P and the logits that predict response token t sit at
column P - 1 + t. Position ids are computed from the attention mask (cumsum - 1), which is what
the generator used when sampling, so the training forward sees exactly the sampled context.
Logits are only materialised over the T response columns (the LM head is applied to a slice of
the trunk's hidden states), which is what bounds memory for long prompts and large vocabularies.

Reference model: with LoRA it is the same module with the adapter disabled (one base model in
memory); with full fine-tuning a frozen deep copy. Critic: "separate" = a copy of the policy's
trunk plus a linear value head (initialised from the policy's weights, as Search-R1 initialises
its critic from the same checkpoint); "head" = a value head on the policy's own trunk.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from searchr1.rl import entropy_from_logits, logprobs_from_logits


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside `model` (unwraps a peft model; LoRA layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trunk_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings + layers + final norm) of a causal LM, without its LM head."""
    lm = causal_lm(model)
    prefix = getattr(lm, "base_model_prefix", "model")
    trunk = getattr(lm, prefix, None)
    if trunk is None and hasattr(lm, "get_decoder"):
        trunk = lm.get_decoder()
    if trunk is None:
        raise TypeError(f"cannot find the decoder stack of {type(lm).__name__}")
    return trunk


def hidden_size(model: nn.Module) -> int:
    config = causal_lm(model).config
    return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over each row's real tokens (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_hidden(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_start: int) -> torch.Tensor:
    """``[B, T_resp, H]``: the hidden states that predict the response tokens (columns P-1 .. P+T-2)."""
    out = trunk(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    T = input_ids.shape[1] - response_start
    return hidden[:, response_start - 1: response_start - 1 + T]


@dataclass
class ForwardOut:
    logprobs: torch.Tensor  # [B, T] log p(response token) under softmax(logits / temperature)
    entropy: torch.Tensor | None  # [B, T] entropy of that distribution (when asked)
    values: torch.Tensor | None  # [B, T] value-head outputs (when a head was given)


def token_stats(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                with_entropy: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``hidden`` ``[B, T, H]`` -> (log p(targets) ``[B, T]``, entropy ``[B, T]`` or None) under
    softmax(head(hidden) / temperature), through fp32 logits ``[B, T, V]``."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = logprobs_from_logits(logits, targets)
    entropy = None
    if with_entropy:
        if entropy_grad:
            entropy = entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
    return logp, entropy


def chunked_token_stats(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                        temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_stats` over ``chunk`` response positions at a time. With gradients, each chunk is
    checkpointed: its ``[B, chunk, V]`` logits are freed after the forward and recomputed in the
    backward, so the LM head's memory is bounded by the chunk instead of the response length, for
    one extra LM-head matmul. Same values and gradients as one pass (`token_stats`)."""
    T = hidden.shape[1]
    if chunk <= 0 or chunk >= T:
        return token_stats(head, hidden, targets, temperature, with_entropy, entropy_grad)
    from torch.utils.checkpoint import checkpoint

    logps, entropies = [], []
    for start in range(0, T, chunk):
        args = (head, hidden[:, start:start + chunk], targets[:, start:start + chunk], temperature, with_entropy,
                entropy_grad)
        logp, entropy = (checkpoint(token_stats, *args, use_reentrant=False) if torch.is_grad_enabled()
                         else token_stats(*args))
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps, 1), (torch.cat(entropies, 1) if with_entropy else None)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_start: int, *, temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = True, value_head: nn.Module | None = None,
                      logits_chunk: int = 0, positions: torch.Tensor | None = None) -> ForwardOut:
    """Per-token log-probs of the response tokens ``input_ids[:, response_start:]``, computing logits
    only over the response columns (``logits_chunk`` > 0: that many columns at a time,
    `chunked_token_stats`). `value_head` (``Linear(H, 1)``) on the same hidden states gives the
    shared-trunk critic's values. ``entropy_grad=False`` computes the entropy as a metric only (no
    graph is kept for it: one ``[B, T, V]`` tensor less in memory).

    ``positions`` ``[B, T]`` (bool): compute the LM head only there; log-probs and entropy are 0
    elsewhere. The learner passes the tokens its losses and metrics read (`Batch.scored`): in a
    Search-R1 batch most response tokens are retrieved passages and padding, whose ``[V]`` logits
    rows would cost a head matmul, a log-softmax and an entropy each for nothing. Values (the
    critic's head is ``[H, 1]``) stay over every column."""
    if response_start < 1:
        raise ValueError("response_start must be >= 1 (the first response token needs a context)")
    lm = causal_lm(model)
    h = response_hidden(trunk_of(model), input_ids, attention_mask, response_start)
    targets = input_ids[:, response_start:]
    head = lm.get_output_embeddings()
    if positions is None:
        logp, entropy = chunked_token_stats(head, h, targets, logits_chunk, temperature, with_entropy, entropy_grad)
    else:
        if positions.shape != targets.shape:
            raise ValueError(f"positions {tuple(positions.shape)} must match the response {tuple(targets.shape)}")
        where = positions.bool()
        some_logp, some_entropy = chunked_token_stats(head, h[where][None], targets[where][None], logits_chunk,
                                                      temperature, with_entropy, entropy_grad)
        logp = _scatter(some_logp[0], where)
        entropy = _scatter(some_entropy[0], where) if with_entropy else None
    values = _value_output(value_head, h) if value_head is not None else None
    return ForwardOut(logp, entropy, values)


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``[N]`` values into a ``[B, T]`` tensor of zeros at the N True cells of `where` (differentiable)."""
    return values.new_zeros(where.shape).masked_scatter(where, values)


def _value_output(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` fp32 values of ``Linear(H, 1)`` over ``[B, T, H]``, as a tensor of its own rather than a
    view (FSDP2 warns about views returned by a sharded module: an in-place op on one skips its hooks)."""
    return head(hidden.to(head.weight.dtype)).squeeze(-1).to(torch.float32, copy=True)


class Critic(nn.Module):
    """V(s_t) for every response position: a causal-LM trunk and a linear value head."""

    def __init__(self, trunk: nn.Module, hidden: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int) -> torch.Tensor:
        h = response_hidden(self.trunk, input_ids, attention_mask, response_start)
        return _value_output(self.value_head, h)


def make_value_head(hidden: int, like: nn.Module) -> nn.Linear:
    p = next(like.parameters())
    head = nn.Linear(hidden, 1).to(device=p.device, dtype=p.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class PolicyForward(nn.Module):
    """The policy's training forward (`sequence_logprobs`, with the shared value head if any) as one
    module call, so that DDP (which synchronises gradients of what goes through its forward)
    can wrap it. Holds the policy and head, no parameters of its own."""

    def __init__(self, policy: nn.Module, value_head: nn.Module | None = None, logits_chunk: int = 0) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.logits_chunk = logits_chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, *,
                temperature: float = 1.0, with_entropy: bool = False, entropy_grad: bool = True,
                positions: torch.Tensor | None = None) -> ForwardOut:
        return sequence_logprobs(self.policy, input_ids, attention_mask, response_start, temperature=temperature,
                                 with_entropy=with_entropy, entropy_grad=entropy_grad, value_head=self.value_head,
                                 logits_chunk=self.logits_chunk, positions=positions)


@dataclass
class TrainModels:
    policy: nn.Module  # what the optimizer trains (a peft model with LoRA)
    reference: nn.Module | None  # frozen copy (full FT), the policy itself (LoRA: adapter disabled), or None
    critic: nn.Module | None  # separate Critic, or the value head (critic="head"), or None (GRPO)
    lora: bool = False
    shared_critic: bool = False
    # The *_forward modules are what training calls: `PolicyForward` over the policy (with the shared
    # value head), the separate critic, `PolicyForward` over the reference; `distribute` makes them
    # data-parallel (DDP-wrapped, or sharded in place). The fields above stay the unwrapped modules,
    # for generation and checkpoints.
    policy_forward: nn.Module | None = None
    critic_forward: nn.Module | None = None
    reference_forward: nn.Module | None = None  # LoRA: policy_forward itself, under `reference_context`
    autocast_dtype: torch.dtype | None = None  # bf16 under bf16-mixed precision (`resolve_precision`)
    logits_chunk: int = 0  # response positions per LM-head pass (`chunked_token_stats`); 0 = all at once

    def compute(self):
        """Context for forward passes (rollouts included): autocast under mixed precision."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.policy.parameters()).device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def generation(self, cache_frozen_casts: bool = True):
        """Context for sampling from the policy (rollouts, held-out evaluations): no gradients, the
        compute precision, and under autocast each frozen weight cast once (`autocast_frozen_once`)
        rather than at every op; `cache_frozen_casts=False` where parameters are sharded."""
        with torch.no_grad(), self.compute():
            if cache_frozen_casts and self.autocast_dtype is not None:
                with autocast_frozen_once(self.policy):
                    yield
            else:
                yield

    def __post_init__(self) -> None:
        if self.policy_forward is None:
            self.policy_forward = PolicyForward(self.policy, self.critic if self.shared_critic else None,
                                                self.logits_chunk)
        if self.critic_forward is None and self.critic is not None and not self.shared_critic:
            self.critic_forward = self.critic
        if self.reference_forward is None and self.reference is not None:
            self.reference_forward = (self.policy_forward if self.reference is self.policy
                              else PolicyForward(self.reference, logits_chunk=self.logits_chunk))

    def distribute(self, dist) -> None:
        """Make the training modules data-parallel for `dist` (a `searchr1.train.distributed.DataParallel`)."""
        shares_policy = self.reference_forward is self.policy_forward
        self.policy_forward = dist.wrap(self.policy_forward, compute_dtype=self.autocast_dtype)
        self.critic_forward = dist.wrap(self.critic_forward, compute_dtype=self.autocast_dtype)
        self.reference_forward = (self.policy_forward if shares_policy
                                  else dist.wrap(self.reference_forward, compute_dtype=self.autocast_dtype))
        if dist.sharded:
            # FSDP2 sets up its root state on the root module's first call. Generation calls the
            # causal LM inside the actor directly; without this call each layer would become a root.
            device = next(self.policy.parameters()).device
            ids = torch.ones(1, 2, dtype=torch.long, device=device)
            with torch.no_grad(), self.compute():
                self.policy_forward(ids, torch.ones_like(ids), 1)
            dist.reshard(self.policy_forward)

    def undistribute(self) -> None:
        """Drop the DDP wrappers again (before the process group is destroyed)."""
        self.policy_forward = getattr(self.policy_forward, "module", self.policy_forward)
        self.critic_forward = getattr(self.critic_forward, "module", self.critic_forward)
        self.reference_forward = getattr(self.reference_forward, "module", self.reference_forward)

    def optimized_modules(self) -> dict[str, nn.Module]:
        """The module whose trainable parameters each optimizer updates (keys as in the trainer's
        optimizers): checkpoints key optimizer states by parameter names relative to it."""
        out = {"policy": self.policy}
        if self.critic is not None:
            out["critic"] = self.critic
        return out

    def set_training(self, training: bool) -> None:
        """Train (dropout on) or eval mode for the trained modules: the policy and the critic."""
        for m in (self.policy, self.critic):
            if m is not None:
                m.train(training)

    def reference_context(self):
        """Context in which `self.reference` computes the reference policy."""
        if self.lora and self.reference is self.policy:
            return self.policy.disable_adapter()
        return contextlib.nullcontext()

    @property
    def value_head(self) -> nn.Module | None:
        return self.critic if self.shared_critic else None


@contextlib.contextmanager
def autocast_frozen_once(module: nn.Module):
    """Inside an autocast region and without gradients: the frozen fp32 parameters of `module`
    (LoRA's base model) are cast to the autocast dtype once, and the copy reused until the region
    ends, as trainable ones are.

    Why: autocast caches its cast of a weight only for leaf tensors that require grad
    (`cached_cast` in PyTorch's autocast_mode.cpp). A frozen weight is cast again by every op that
    reads it, so a LoRA policy's decode pass reads and writes its whole base model once more per
    token. With the casts cached, a LoRA policy decodes 1.6-1.8x faster (SmolLM2-135M) and
    2.3-2.5x faster (Qwen2.5-0.5B) on a CPU (benchmarks/frozen_casts.py). Marking the frozen
    leaves as requiring grad for the duration makes autocast cache them; the values are the same
    casts, so outputs are identical. The flags are restored on exit; gradients are off inside, so
    nothing can accumulate into them."""
    frozen = [p for p in module.parameters() if not p.requires_grad and p.is_leaf and p.dtype == torch.float32]
    with torch.no_grad():
        for p in frozen:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(False)


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, targets) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # peft is a dependency; a trimmed environment gets a clear message
        from searchr1.errors import MissingDependencyError

        raise MissingDependencyError("LoRA (train.lora.r > 0) needs peft: pip install peft") from None
    target = targets[0] if len(targets) == 1 and targets[0] == "all-linear" else list(targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                        task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def resolve_precision(precision: str, device: str, cpu_bf16: bool | None = None) -> tuple[str, torch.dtype | None]:
    """`TrainConfig.precision` on `device` -> (dtype to load the weights in, autocast dtype or None).
    "auto" is bf16-mixed on CUDA and on CPUs that multiply bf16 natively (`cpu_bf16`; None = ask
    `searchr1.modelhub.cpu_computes_bf16`), fp32 elsewhere."""
    if precision == "auto":
        device = str(device)
        if device.startswith("cpu") and cpu_bf16 is None:
            from searchr1.modelhub import cpu_computes_bf16

            cpu_bf16 = cpu_computes_bf16()
        native = device.startswith("cuda") or (device.startswith("cpu") and bool(cpu_bf16))
        precision = "bf16-mixed" if native else "fp32"
    if precision == "bf16":
        return "bfloat16", None
    if precision == "bf16-mixed":
        return "float32", torch.bfloat16
    if precision == "fp32":
        return "float32", None
    raise ValueError(f"unknown precision {precision!r}: auto, fp32, bf16-mixed or bf16")


def build_models(model: nn.Module, tcfg, autocast_dtype: torch.dtype | None = None) -> TrainModels:
    """Wire policy, reference and critic around a loaded causal LM, following a `TrainConfig`.
    A frozen reference copy keeps the policy's weight dtype, and under mixed precision runs under
    the same autocast: its log-probs are then computed exactly as the policy's (KL 0 at step 0). A
    copy stored in bf16 instead carries a bf16 residual stream: on SmolLM2 its step-0 KL was 5e-3
    and single tokens differed by 0.6 nats (tests/integration/test_learner_model.py)."""
    lora = tcfg.lora.r > 0
    if tcfg.compute.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name in recent transformers
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    critic: nn.Module | None = None
    shared = False
    if tcfg.algo.needs_critic and tcfg.critic == "separate":
        # Copied before LoRA is applied: the critic is a full trunk initialised from the policy.
        trunk = copy.deepcopy(trunk_of(model))
        critic = Critic(trunk, hidden_size(model))
        p = next(model.parameters())
        critic.to(device=p.device)
        critic.value_head.to(dtype=torch.float32)
    policy = apply_lora(model, tcfg.lora.r, tcfg.lora.alpha, tcfg.lora.dropout, tcfg.lora.targets) if lora else model
    if tcfg.algo.needs_critic and tcfg.critic == "head":
        critic = make_value_head(hidden_size(model), model).float()
        shared = True
    reference: nn.Module | None = None
    if tcfg.needs_reference:
        if lora:
            reference = policy
        else:
            reference = copy.deepcopy(model)
            reference.requires_grad_(False)
            reference.eval()
    return TrainModels(policy=policy, reference=reference, critic=critic, lora=lora, shared_critic=shared,
                       autocast_dtype=autocast_dtype, logits_chunk=tcfg.compute.logits_chunk)
