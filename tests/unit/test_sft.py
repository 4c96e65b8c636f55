"""Supervised warm-up: the loss covers policy (mask-1) tokens only, and it learns on a tiny model."""

from __future__ import annotations

import pytest
import torch

from fakes import char_tokenizer, chat_tokenizer
from searchr1.config import from_dict
from searchr1.data.synthetic import Question
from searchr1.errors import ConfigError
from searchr1.retrieval.base import Hit
from searchr1.rollout.trajectory import Trajectory
from searchr1.settings import Config
from searchr1.train.models import position_ids_from_mask
from searchr1.train.settings import SFTConfig
from searchr1.train.sft import masked_nll, play_demonstrations, warmup
from searchr1.train.batch import collate

torch.set_num_threads(1)


def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=False))


class TitleRetriever:
    """Finds the passage titled like the query; `miss` = titles it never finds."""

    def __init__(self, miss=()):
        self.miss = set(miss)

    def search(self, queries, k):
        return [[Hit(f"id-{q}", "Other" if q in self.miss else q, f"{q} lies in Kora.", 1.0)] for q in queries]


def cfg_for(**sft):
    return from_dict(Config, {"model": {"device": "cpu", "chat": "raw"},
                              "agent": {"max_turns": 2, "topk": 1, "retrieval_backoff_s": 0,
                                        "template": "Q: {question}\n"},
                              "train": {"micro_batch_size": 2},
                              "sft": {"steps": 0, **sft}})


QUESTIONS = [Question(f"q{i}", f"Where is {n}?", ["Kora"], 1, "where", [n]) for i, n in
             enumerate(["Ana", "Bel", "Cor", "Dun"])]


def test_the_loss_only_covers_mask_one_tokens():
    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    t1 = Trajectory("a", [], prompt_ids=[5, 6, 7], response_ids=[8, 9, 10, 11, 12], policy_mask=[1, 1, 0, 0, 1],
                    logprobs=[0.0] * 5)
    t2 = Trajectory("b", [], prompt_ids=[13], response_ids=[14, 15], policy_mask=[0, 1], logprobs=[0.0] * 2)
    batch = collate([t1, t2], pad_id=0)
    loss, n = masked_nll(model, batch)
    assert n == 4
    # by hand: full forward, log-prob of every response token, mean over the mask-1 ones
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids_from_mask(batch.attention_mask)).logits
        logp = torch.log_softmax(logits.float(), -1)
    P = batch.response_start
    picked = []
    for row, t in enumerate([t1, t2]):
        for j, (tok_id, m) in enumerate(zip(t.response_ids, t.policy_mask)):
            if m:
                picked.append(float(logp[row, P - 1 + j, tok_id]))
    assert len(picked) == 4
    assert float(loss.detach()) == pytest.approx(-sum(picked) / 4, rel=1e-5)
    # the injected tokens' own log-probs get no gradient: the loss does not change when the
    # model is told they are masked and the targets there are swapped for other tokens' ...
    # ... checked directly: a batch whose mask is all zero gives a zero loss and no targets
    t3 = Trajectory("c", [], prompt_ids=[5], response_ids=[8, 9], policy_mask=[0, 0], logprobs=[0.0] * 2)
    loss0, n0 = masked_nll(model, collate([t3], pad_id=0))
    assert n0 == 0 and float(loss0) == 0.0


def test_the_logprob_of_an_injected_token_does_not_enter_the_loss():
    tok = char_tokenizer()
    model = tiny_llama(len(tok))
    # same context, only the LAST response token differs, and it is injected (mask 0)
    a = Trajectory("a", [], prompt_ids=[5, 6], response_ids=[8, 9, 10], policy_mask=[1, 1, 0], logprobs=[0.0] * 3)
    b = Trajectory("b", [], prompt_ids=[5, 6], response_ids=[8, 9, 30], policy_mask=[1, 1, 0], logprobs=[0.0] * 3)
    la, _ = masked_nll(model, collate([a], 0))
    lb, _ = masked_nll(model, collate([b], 0))
    assert float(la) == pytest.approx(float(lb), rel=1e-6)
    # whereas the same change on a mask-1 token changes it
    c = Trajectory("c", [], prompt_ids=[5, 6], response_ids=[8, 9, 30], policy_mask=[1, 1, 1], logprobs=[0.0] * 3)
    d = Trajectory("d", [], prompt_ids=[5, 6], response_ids=[8, 9, 10], policy_mask=[1, 1, 1], logprobs=[0.0] * 3)
    assert float(masked_nll(model, collate([c], 0))[0]) != pytest.approx(float(masked_nll(model, collate([d], 0))[0]))


def test_demonstrations_keep_only_supported_episodes_with_real_masks():
    tok = char_tokenizer()
    kept, dropped = play_demonstrations(cfg_for(), tok, TitleRetriever(miss={"Bel"}), QUESTIONS)
    assert len(kept) == 3 and dropped == 1
    t = kept[0]
    assert t.stop_reason == "answer" and t.answer == "Kora"
    assert 0 in t.policy_mask and 1 in t.policy_mask  # the <information> block is injected
    injected = tok.decode([i for i, m in zip(t.response_ids, t.policy_mask) if not m])
    assert "<information>" in injected and "Ana lies in Kora." in injected
    generated = tok.decode([i for i, m in zip(t.response_ids, t.policy_mask) if m])
    assert "<information>" not in generated and "<search> Ana </search>" in generated


def test_warmup_lowers_the_loss_on_a_tiny_model():
    tok = char_tokenizer()
    model = tiny_llama(len(tok)).eval()
    cfg = cfg_for(steps=12, lr=1e-2, batch_size=2, examples=4)
    out = warmup(cfg, model, tok, TitleRetriever(), QUESTIONS)
    assert out["steps"] == 12 and len(out["losses"]) == 12
    assert out["kept"] == 4 and out["dropped"] == 0 and out["tokens"] > 0
    assert sum(out["losses"][-3:]) / 3 < 0.7 * sum(out["losses"][:3]) / 3, out["losses"]
    assert not model.training  # left as it was found (eval mode)


def test_sft_is_off_by_default_and_validated():
    assert Config().sft.steps == 0
    with pytest.raises(ValueError):
        SFTConfig(batch_size=0)
    tok = char_tokenizer()
    out = warmup(cfg_for(examples=2), tiny_llama(len(tok)), tok, TitleRetriever(), QUESTIONS)
    assert out["steps"] == 0 and out["losses"] == [] and out["kept"] == 2


def test_tool_call_demonstrations_call_the_search_tool_and_end_with_eos():
    """agent.protocol=tool_call: each search is a Hermes/Qwen tool call, each result the template's
    tool message (mask 0), and the final message ends with the policy's EOS (mask 1: it is learned).
    That this is the real template's rendering is checked on Qwen2.5 (tests/integration/test_toolcall_qwen.py)."""
    tok = chat_tokenizer()
    cfg = cfg_for()
    cfg.agent.protocol, cfg.model.chat = "tool_call", "template"
    kept, dropped = play_demonstrations(cfg, tok, TitleRetriever(miss={"Bel"}), QUESTIONS)
    assert len(kept) == 3 and dropped == 1
    t = kept[0]
    assert [(turn.action, turn.content) for turn in t.turns] == [("search", "Ana"), ("answer", "Kora")]
    assert t.stop_reason == "answer" and t.answer == "Kora"
    generated = tok.decode([i for i, m in zip(t.response_ids, t.policy_mask) if m])
    injected = tok.decode([i for i, m in zip(t.response_ids, t.policy_mask) if not m])
    assert generated == ("<think> I need to find information about Ana. </think>\n<tool_call>\n"
                         '{"name": "search", "arguments": {"query": "Ana"}}\n</tool_call>'
                         "<think> The documents say the answer is Kora. </think>\n<answer> Kora </answer><|im_end|>")
    assert injected == ("<|im_end|>\n<|im_start|>user\n<tool_response>\nDoc 1(Title: \"Ana\") Ana lies in Kora.\n"
                        "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tool_call_demonstrations_under_a_template_that_opens_thinking():
    """A Qwen3-style template opens <think> in every generation prompt: the demonstration's turns
    continue that block instead of opening another, and still score and parse."""
    tok = chat_tokenizer(think_prompt=True)
    cfg = cfg_for()
    cfg.agent.protocol, cfg.model.chat = "tool_call", "template"
    kept, dropped = play_demonstrations(cfg, tok, TitleRetriever(), QUESTIONS[:1])
    assert len(kept) == 1 and kept[0].answer == "Kora"
    text = tok.decode(kept[0].prompt_ids + kept[0].response_ids)
    assert text.count("<think>") == 2 and "<think>\nI need to find information about Ana. </think>\n<tool_call>" in text
    assert text.endswith("<think>\nThe documents say the answer is Kora. </think>\n<answer> Kora </answer><|im_end|>")


def test_tool_call_demonstrations_need_an_eos_token():
    tok = chat_tokenizer()
    tok.eos_token = None
    cfg = cfg_for()
    cfg.agent.protocol, cfg.model.chat = "tool_call", "template"
    with pytest.raises(ConfigError, match="EOS token"):
        play_demonstrations(cfg, tok, TitleRetriever(), QUESTIONS)
