"""Training against a real retrieval server on 127.0.0.1 that goes away in the middle of the run
(issue 24, items 2 and 3): the run checkpoints, waits, and completes every step exactly once; an
over-long query from the policy is cut to the server's limit and counted, never fatal."""

import json
import threading
import time

import pytest
import torch

from searchr1.config import from_dict
from searchr1.errors import RetrieverUnavailableError
from searchr1.retrieval.base import Hit
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.server import BackgroundServer
from searchr1.retrieval.settings import ServerConfig
from searchr1.rollout.engine import EngineGenerator
from searchr1.settings import Config
from searchr1.train.checkpoint import list_checkpoints
from searchr1.train.metrics_log import read_metrics
from searchr1.train.trainer import train
from fakes import ScriptedLM, char_tokenizer, continue_script

torch.set_num_threads(1)

MAX_QUERY_CHARS = 20
QUERY = "q" * 40  # twice the server's limit: the server would answer 422
STEPS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("outage")
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "qa.jsonl").write_text("".join(
        json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": ["x"]}) + "\n" for i in range(8)))
    return root


def make_cfg(world, run_dir):
    return from_dict(Config, {
        "model": {"name": str(world / "tiny"), "device": "cpu", "chat": "raw"},
        "agent": {"max_turns": 1, "max_turn_tokens": 60, "max_obs_tokens": 40, "topk": 1,
                  "template": "Q: {question}\n"},
        "retriever": {"wait_deadline_s": 60, "backoff_s": 0.05},
        "train": {"algorithm": "grpo", "steps": STEPS, "prompts_per_step": 2, "group_size": 2,
                  "mini_batch_size": 4, "micro_batch_size": 4, "optim": {"lr": 1e-3},
                  "questions": {"datasets": [str(world / "qa.jsonl")]}, "run_dir": str(run_dir), "save_every": 0,
                  "tensorboard": False, "progress": False}})


def search_then_answer(ctx: str) -> str | None:
    return continue_script(ctx, "<answer> x </answer>" if "<information>" in ctx else f"<search> {QUERY} </search>")


def scripted(model, tok):
    return EngineGenerator(ScriptedLM(tok, search_then_answer), tok)


class Backend:
    """The server's retriever. From search call `fail_from` on, it fails and has its server stopped and,
    `down_s` later, replaced by a fresh one on the same port: a crash and a restart."""

    def __init__(self, fail_from: int = 0, on_fail=None):
        self.calls, self.fail_from, self.on_fail = [], fail_from, on_fail

    def search(self, queries, k):
        self.calls.append(list(queries))
        if self.fail_from and len(self.calls) >= self.fail_from:
            if len(self.calls) == self.fail_from:
                self.on_fail()
            raise RuntimeError("index file vanished")
        return [[Hit("d", "T", f"about {q}", 1.0)] for q in queries]


class Restartable:
    def __init__(self, fail_from: int, down_s: float):
        self.cfg = ServerConfig(port=0, max_query_chars=MAX_QUERY_CHARS)
        self.backend = Backend(fail_from, self.crash)
        self.server = BackgroundServer(self.backend, self.cfg)
        self.url = self.server.start()
        self.cfg.port = int(self.url.rsplit(":", 1)[1])
        self.down_s, self.restarted = down_s, threading.Event()

    def crash(self):
        def go():
            self.server.stop()
            time.sleep(self.down_s)
            self.backend = Backend()
            self.server = BackgroundServer(self.backend, self.cfg)
            self.server.start()
            self.restarted.set()

        threading.Thread(target=go, daemon=True).start()


class Said:
    def __init__(self):
        self.lines = []

    def print(self, text, markup=False):
        self.lines.append(text)


def run(world, run_dir, server, console=None):
    with HttpRetriever(server.url, retries=1, backoff_s=0.05, learn_limits=True) as client:
        return train(make_cfg(world, run_dir), console=console, generator_factory=scripted, retriever=client)


def test_retriever_killed_and_restarted_mid_run(world, tmp_path):
    steady = Restartable(fail_from=0, down_s=0)
    try:
        reference = run(world, tmp_path / "steady", steady)
    finally:
        steady.server.stop()

    flaky = Restartable(fail_from=2, down_s=1.0)  # the 2nd search call is step 2's
    said = Said()
    try:
        result = run(world, tmp_path / "flaky", flaky, said)
    finally:
        flaky.server.stop()
    assert flaky.restarted.is_set()
    assert any("waiting up to 60 s" in line for line in said.lines), said.lines
    rows = read_metrics(tmp_path / "flaky")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # nothing lost, nothing repeated
    # the step that met the outage was played again from the same prompts: the run is the steady one
    assert result["history"] == reference["history"]
    assert [p.name for p in list_checkpoints(tmp_path / "flaky")] == ["step-000001", f"step-{STEPS:06d}"]
    # the restarted server answered the replayed step onward: 3 steps' searches
    assert len(flaky.backend.calls) == STEPS - 1


def test_over_long_queries_are_cut_and_counted(world, tmp_path):
    server = Restartable(fail_from=0, down_s=0)
    try:
        run(world, tmp_path / "run", server)
    finally:
        server.server.stop()
    served = [q for call in server.backend.calls for q in call]
    assert served and {len(q) for q in served} == {MAX_QUERY_CHARS}
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == STEPS
    # every query the policy wrote was over the limit, so each one searched was cut and counted
    assert sum(r["rollout/queries_cut"] for r in rows) == len(served)


def test_a_retriever_that_stays_down_ends_the_run_after_the_deadline(world, tmp_path):
    server = Restartable(fail_from=1, down_s=3600)  # crashes at the first search, never comes back
    cfg = make_cfg(world, tmp_path / "run")
    cfg.retriever.wait_deadline_s = 0.5
    t0 = time.monotonic()
    with HttpRetriever(server.url, retries=0, learn_limits=True) as client:
        with pytest.raises(RetrieverUnavailableError, match="wait_deadline_s"):
            train(cfg, generator_factory=scripted, retriever=client)
    assert time.monotonic() - t0 < 30
    assert list_checkpoints(tmp_path / "run") == []  # no step completed: nothing to save
