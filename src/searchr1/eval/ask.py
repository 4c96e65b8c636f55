"""`searchr1 ask "question"`: one question through the search agent, printed turn by turn.

Thinking is dim, searches cyan, retrieved passages in a dim panel, the answer green. Turns are
printed as soon as the agent has finished them (with their retrieved passages).
"""

from __future__ import annotations

import re
import time

from searchr1.eval.harness import build_trajectories
from searchr1.retrieval.local import open_retriever
from searchr1.rollout.agent import Agent
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.backend import open_generator
from searchr1.rollout.trajectory import Trajectory, Turn

_SEGMENT = re.compile(r"(<think>.*?(?:</think>|$)|<search>.*?(?:</search>|$)|<tool_call>.*?(?:</tool_call>|$)"
                      r"|<answer>.*?(?:</answer>|$))", re.S)


def styled_text(text: str):
    """The policy's text as a rich `Text` (never parsed as markup): <think> dim, <search> and
    <tool_call> (agent.protocol=tool_call) cyan, <answer> green."""
    from rich.text import Text

    out = Text()
    for part in _SEGMENT.split(text):
        if not part:
            continue
        if part.startswith("<think>"):
            out.append(part, style="dim")
        elif part.startswith(("<search>", "<tool_call>")):
            out.append(part, style="bold cyan")
        elif part.startswith("<answer>"):
            out.append(part, style="bold green")
        else:
            out.append(part)
    return out


def print_turn(console, turn: Turn, number: int) -> None:
    from rich.panel import Panel
    from rich.text import Text

    head = Text(f"turn {number} · {turn.action} · {turn.generated_tokens} tokens", style="bold")
    console.print(head)
    console.print(styled_text(turn.text.strip("\n")))
    obs = turn.observation.strip()
    if obs and turn.action == "search":
        title = Text(f"{len(turn.doc_ids)} passages for ", style="dim").append(turn.content, style="cyan")
        console.print(Panel(Text(obs, style="dim"), title=title, title_align="left", border_style="dim"))
    elif obs:
        console.print(Text(obs, style="yellow"))


def ask(cfg, question: str, console=None, generator=None, retriever=None) -> Trajectory:
    """Run one episode of the agent (cfg.eval's template and decoding: greedy by default)
    and print it; returns the trajectory."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console(highlight=False)
    own_retriever = retriever is None
    if own_retriever:
        retriever = open_retriever(cfg.retriever)
    try:
        if generator is None:
            with console.status(f"loading {cfg.model.name}"):
                generator = open_generator(cfg)
        traj = build_trajectories(cfg, generator.tokenizer, "ask",
                                  [{"id": "ask", "question": question, "golden_answers": []}], "agent")[0]
        console.print(Text("question: ", style="bold").append(question))
        printed = 0

        def on_progress(_stats=None) -> None:
            nonlocal printed
            while printed < len(traj.turns):
                print_turn(console, traj.turns[printed], printed + 1)
                printed += 1

        t0 = time.perf_counter()
        with console.status("generating"):
            stats = Agent(generator, retriever, cfg.agent).run(
                [traj], SamplingParams(temperature=cfg.eval.temperature, seed=cfg.eval.seed), on_progress=on_progress)
        on_progress()
        seconds = time.perf_counter() - t0
    finally:
        if own_retriever:
            getattr(retriever, "close", lambda: None)()
    answer = traj.answer
    console.print()
    if answer is None:
        console.print(Text("no answer", style="bold red"))
    else:
        console.print(Text("answer: ", style="bold").append(answer, style="bold green"))
    console.print(Text(f"searches: {traj.num_searches} · stop reason: {traj.stop_reason} · "
                       f"{traj.generated_tokens} generated tokens · {seconds:.1f} s "
                       f"({stats.generate_seconds:.1f} s generating, {stats.retrieve_seconds:.2f} s retrieving)",
                       style="dim"))
    return traj
