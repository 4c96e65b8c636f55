"""`searchr1 ask` (searchr1.eval.ask) follows agent.protocol: a scripted policy on a test chat template."""

from rich.console import Console

from fakes import ScriptedLM, chat_tokenizer, continue_script
from searchr1.config import from_dict
from searchr1.eval.ask import ask, styled_text
from searchr1.retrieval.base import Hit
from searchr1.rollout.engine import EngineGenerator
from searchr1.settings import Config

CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "capital of Peru"}}\n</tool_call>'


class OneDoc:
    def search(self, queries, k):
        return [[Hit("d1", "Peru", "Lima is the capital of Peru.", 1.0)] for _ in queries]


def test_styled_text_colours_tool_calls_like_searches():
    text = styled_text("<think>hm</think>" + CALL + "<answer> Lima </answer>")
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styles == {"<think>hm</think>": "dim", CALL: "bold cyan", "<answer> Lima </answer>": "bold green"}


def test_ask_plays_the_tool_call_protocol():
    tok = chat_tokenizer()
    pol = lambda ctx: continue_script(ctx, "Lima" if "<tool_response>" in ctx else CALL)  # noqa: E731
    cfg = from_dict(Config, {"model": {"device": "cpu", "chat": "template"},
                             "agent": {"protocol": "tool_call", "retrieval_backoff_s": 0.0}})
    console = Console(record=True, width=200)
    traj = ask(cfg, "What is the capital of Peru", console=console,
               generator=EngineGenerator(ScriptedLM(tok, pol), tok), retriever=OneDoc())
    assert (traj.answer, traj.queries(), traj.stop_reason) == ("Lima", ["capital of Peru"], "answer")
    assert "<tools>" in tok.decode(traj.prompt_ids)  # the template listed the search tool
    out = console.export_text()
    assert "turn 1 · search" in out and "1 passages for capital of Peru" in out and "answer: Lima" in out
