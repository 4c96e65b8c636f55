"""`checkpoint_weights`: the policy under its checkpoint names, LoRA merged, checked against peft's own merge."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from searchr1.rollout.weights import checkpoint_weights
from searchr1.train.models import apply_lora


def _tiny(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def test_plain_model_is_its_named_parameters():
    model = _tiny()
    got = dict(checkpoint_weights(model))
    want = dict(model.named_parameters())
    assert list(got) == list(want)  # tied lm_head appears once, as in named_parameters
    assert "lm_head.weight" not in got
    for name, t in want.items():
        assert got[name].data_ptr() == t.data_ptr()  # no copies of weights that need none


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"]])
def test_lora_merged_equals_peft_merge_and_unload(targets):
    base = _tiny()
    peft_model = apply_lora(base, r=4, alpha=8, dropout=0.0, targets=targets)
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at zero (delta 0); make the delta real
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    inner = peft_model.get_base_model()  # what the trainer hands its generator (causal_lm)
    got = dict(checkpoint_weights(inner))
    reference = copy.deepcopy(peft_model).merge_and_unload()
    want = dict(reference.named_parameters())
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    # the policy itself is untouched: still the LoRA model, not merged
    assert any("lora_A" in n for n, _ in inner.named_parameters())
    changed = [n for n in want if not torch.equal(got[n], dict(_tiny().named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)  # only adapted layers differ


def test_disabled_adapter_gives_base_weights():
    peft_model = apply_lora(_tiny(), r=4, alpha=8, dropout=0.0, targets=["q_proj"])
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(1.0)
    with peft_model.disable_adapter():
        got = dict(checkpoint_weights(peft_model.get_base_model()))
    base = dict(_tiny().named_parameters())
    for name in base:
        torch.testing.assert_close(got[name], base[name], rtol=0, atol=0)
