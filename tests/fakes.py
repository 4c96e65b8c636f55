"""Test doubles with exactly known behaviour: a character tokenizer and a scripted causal LM.

`ScriptedLM` is a real `torch.nn.Module` driven through the same forward signature and KV cache
as a transformers model, so `EngineSession` runs unchanged on it; but its next token is chosen by a
Python function of the row's visible context (decoded from the tokens the attention mask lets it
see), so every expected output can be written down by hand. It stores token ids in the cache in
place of keys, which also checks that the session's cache bookkeeping (padding, row removal)
keeps each row's context exactly. `SyncRecordingGenerator` is our engine recording how the
trainer drives the `Generator` contract.
"""

from __future__ import annotations

import math
import string
from types import SimpleNamespace

import torch

from searchr1.rollout.engine import EngineGenerator

LOGIT = 10.0  # the scripted token's logit; every other token has logit 0


def char_tokenizer():
    """One token per printable character, plus <pad> (0) and <eos> (1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1}
    for c in string.printable:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


#: A Qwen3-style chat template (ChatML, Hermes tool calls, tool results as a user turn inside
#: <tool_response>, an assistant's reasoning_content kept inside <think>), written for the tests.
#: With `think_prompt` the generation prompt opens the thinking block, as reasoning templates do.
QWEN3_STYLE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}"
    "{% for c in m.tool_calls or [] %}{% if m.content %}\n{% endif %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}'
    "<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if think_prompt %}<think>\n{% endif %}{% endif %}"
)


def chat_tokenizer(think_prompt: bool = False):
    """`char_tokenizer` with ChatML's <|im_start|> and <|im_end|> as special tokens (<|im_end|> is the
    EOS) and QWEN3_STYLE_TEMPLATE as its chat template."""
    tok = char_tokenizer()
    tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    template = QWEN3_STYLE_TEMPLATE
    if think_prompt:
        template = "{% set think_prompt = true %}" + template
    tok.chat_template = template
    return tok


def scripted_logprob(vocab_size: int) -> float:
    """log p of the scripted token under softmax(logits) (temperature 1)."""
    return LOGIT - math.log(math.exp(LOGIT) + vocab_size - 1)


def continue_script(context: str, script: str) -> str | None:
    """The next character of `script` given that `context` ends with a prefix of it (None at its end).

    The longest prefix of `script` that the context ends with is taken as written so far.
    """
    for k in range(len(script), 0, -1):
        if context.endswith(script[:k]):
            return script[k] if k < len(script) else None
    return script[0]


class ScriptedLM(torch.nn.Module):
    """policy(visible_text) -> next character, or None for EOS."""

    def __init__(self, tokenizer, policy, max_context: int = 100_000) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.policy = policy
        self.vocab_size = len(tokenizer)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.config = SimpleNamespace(max_position_embeddings=max_context)
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)
        self.calls: list[tuple[int, int]] = []  # (batch, width) of each forward pass

    def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=0):
        batch, width = input_ids.shape
        self.calls.append((batch, width))
        as_keys = input_ids[:, None, :, None].float()
        keys, _ = cache.update(as_keys, as_keys, 0)
        history = keys[:, 0, :, 0].long()
        assert history.shape == attention_mask.shape, "cache and attention mask out of step"
        logits = torch.zeros(batch, 1, self.vocab_size)
        for b in range(batch):
            visible = history[b][attention_mask[b].bool()].tolist()
            nxt = self.policy(self.tokenizer.decode(visible)) if visible else None
            tok = self.tokenizer.eos_token_id if nxt is None else self.tokenizer.convert_tokens_to_ids(nxt)
            logits[b, 0, tok] = LOGIT
        return SimpleNamespace(logits=logits)


class Passages:
    """A retriever over made-up passages that name the query (the real index is tested elsewhere)."""

    def search(self, queries, k):
        from searchr1.retrieval.base import Hit

        return [[Hit(f"d{i}", f"Title {i}", f"Passage {i} about {q}.", 1.0) for i in range(k)] for q in queries]


class SyncRecordingGenerator(EngineGenerator):
    """Our engine, recording the trainer's side of the `Generator` contract: each `weights_updated`
    counts and adds `SYNC_SECONDS` to `weight_sync_seconds`, as an engine with its own copy of the
    weights would; `close` is recorded, not performed."""

    SYNC_SECONDS = 0.25

    def __init__(self, model, tokenizer, **kwargs) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.updates = 0
        self.closed = False

    def weights_updated(self) -> None:
        self.updates += 1
        self.weight_sync_seconds += self.SYNC_SECONDS

    def close(self) -> None:
        self.closed = True


class ReplyGenerator:
    """A `Generator` that answers each prompt with `reply(prompt text)` in one turn (for callers that
    prompt a model once, such as simulated search); records the prompts it saw."""

    weight_sync_seconds = 0.0

    def __init__(self, tokenizer, reply) -> None:
        self.tokenizer = tokenizer
        self.reply = reply
        self.prompts: list[str] = []
        self.closed = False

    def session(self, prompts, params):
        from searchr1.rollout.generator import Sample, TurnBatchedSession

        gen = self
        texts = [self.tokenizer.decode(p) for p in prompts]
        gen.prompts += texts

        class Session(TurnBatchedSession):
            def generate(self, appended, max_new_tokens, stop=()):
                out = {}
                for row in appended:
                    ids = list(gen.tokenizer(gen.reply(texts[row]), add_special_tokens=False)["input_ids"])
                    limit = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row]
                    out[row] = Sample(ids[:limit], [0.0] * min(len(ids), limit), "eos" if len(ids) <= limit else "length")
                return out

            def finish(self, rows):
                pass

            def close(self):
                pass

        return Session()

    def weights_updated(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
