"""Demonstrations of the search protocol on the synthetic world, for an optional supervised warm-up.

A small instruct model (SmolLM2-135M) never writes `<search>` or `<answer>` on its own, and RL
cannot reinforce a format it never samples. The warm-up shows it the format on training questions
of the synthetic world: one search per hop (the entity whose passage holds the fact, which the
world knows), then the answer. Played through the real agent and retriever
(`searchr1.rollout.scripted.ScriptedGenerator`), the demonstrations carry real retrieved passages
and the same loss masks as RL rollouts. Off in the paper presets; reports say when it was used.
"""

from __future__ import annotations

from searchr1.data.synthetic import Question
from searchr1.toolcall import search_call


def demonstration(q: Question, protocol: str = "tags") -> list[str]:
    """The turn texts of an ideal episode for `q`: one search per supporting passage, then the answer.
    Under the tool_call protocol a search is the chat template's tool call (`toolcall.search_call`);
    the answer is the same `<answer>` span, which that protocol's answer rule reads too."""
    turns = []
    for i, title in enumerate(q.support):
        why = "I need to find" if i == 0 else "Now I need to find"
        call = search_call(title) if protocol == "tool_call" else f"<search> {title} </search>"
        turns.append(f"<think> {why} information about {title}. </think>\n{call}")
    answer = q.golden_answers[0]
    turns.append(f"<think> The documents say the answer is {answer}. </think>\n<answer> {answer} </answer>")
    return turns


def observations_support(traj, q: Question) -> bool:
    """True when every search of the played episode retrieved the passage it was meant to find, so
    the demonstration never teaches answering from passages that do not hold the answer."""
    searches = [t for t in traj.turns if t.action == "search"]
    return len(searches) == len(q.support) and all(
        f"(Title: {title})" in t.observation or f'(Title: "{title}")' in t.observation
        for t, title in zip(searches, q.support))
