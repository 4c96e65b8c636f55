"""One step of a Search-R1 episode: the environment's rules, applied to a turn the policy finished.

Both agent loops drive episodes through `EpisodeStep`: our batched agent (`searchr1.rollout.agent`)
and the veRL agent loop (`searchr1.export.episode`). They differ only in how they sample a turn and
how they run a search (the agent batches the queries of every row whose turn ended; the veRL loop
awaits one query), so a policy trained under veRL sees, token for token, what `searchr1 train` and
`searchr1 eval` show it. One step, for a trajectory whose turn just ended:

    decision = step.turn(traj, sample)   # append the sampled ids (mask 1), parse, decide
    decision.done                        -> the episode is over (traj.stop_reason is set)
    decision.outcome == "search"         -> run decision.query, then step.observe(traj, hits)
    decision.outcome == "invalid"        -> step.observe(traj): the invalid-action note
    ids = step.observe(...)              -> ids to feed before the next turn, or None: they filled
                                            the response and the episode ended ("length")

Decisions follow `turn_outcome`, first match wins:

    </answer> a        -> done (answer)
    EOS                -> done (eos)
    response budget    -> done (length)
    final turn         -> done (max_turns): after max_turns action turns the next turn ends it,
                          and a search written there is not executed (as in Search-R1)
    </search> q        -> search, then "\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n"
    anything else      -> invalid, then Search-R1's invalid-action note

That is the tags protocol (`agent.protocol=tags`, the paper's). What a turn asks for, how results and
notes are written and where a turn stops come from the step's protocol (`searchr1.rollout.protocols`):
under `tool_call` a turn stops at `</tool_call>`, a message ended by EOS without a call is the answer,
and the documents or the note (why the call was invalid) come back as the chat template's tool message.

Tokens are appended as ids, never re-tokenised from text, with their policy mask set as they are
appended: 1 for what the policy sampled, 0 for what the environment injected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from searchr1.retrieval.base import Hit
from searchr1.rollout.generator import Sample
from searchr1.rollout.protocols import encode_text, make_protocol
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.trajectory import Trajectory, Turn

#: outcomes of `turn_outcome` that end the episode (they are its stop_reason)
ENDINGS = ("answer", "eos", "length", "max_turns")


def turn_outcome(action: str, eos: bool, response_tokens: int, turns: int, max_turns: int,
                 max_response_tokens: int) -> str:
    """What follows a generated turn, by the rules in the module docstring, first match wins:
    "answer" (the turn answered), "eos" (the policy ended the sequence), "length" (the response
    budget is spent), "max_turns" (that was the final turn), else "search" (retrieve, inject the
    documents) or "invalid" (inject the invalid-action note). `action` is the protocol's parsed kind,
    `turns` counts the turns generated so far, this one included."""
    if action == "answer":
        return "answer"
    if eos:
        return "eos"
    if response_tokens >= max_response_tokens:
        return "length"
    if turns > max_turns:
        return "max_turns"
    return "search" if action == "search" else "invalid"


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids; a BOS is prepended when the tokenizer normally adds one and the text (e.g. a
    chat template's output, which writes its own) does not start with it."""
    ids = encode_text(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == bos:
            ids = [bos, *ids]
    return ids


@dataclass(frozen=True)
class Decision:
    """What follows a turn: `outcome` is `turn_outcome`'s; `query` is the search to run when it is "search"."""

    outcome: str
    query: str = ""

    @property
    def done(self) -> bool:
        return self.outcome in ENDINGS


class EpisodeStep:
    """The rules of one agent configuration over one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer, cfg: AgentConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.protocol = make_protocol(cfg.protocol, tokenizer)
        self.stop_strings = self.protocol.stop_strings
        self._prefix = encode_text(tokenizer, cfg.response_prefix) if cfg.response_prefix else []

    def begin(self, traj: Trajectory) -> list[int]:
        """Append the forced response prefix (mask 0); the ids to feed before the first turn."""
        traj.append(self._prefix, 0)
        return list(self._prefix)

    def budget(self, traj: Trajectory) -> int:
        """New tokens the next turn may sample: a turn's budget, within what is left of the response's."""
        return min(self.cfg.max_turn_tokens, self.cfg.max_response_tokens - len(traj.response_ids))

    def turn(self, traj: Trajectory, sample: Sample) -> Decision:
        """Record a finished turn (its ids with mask 1) and decide what follows; an ending is
        written on the trajectory (stop_reason, answer, response_text)."""
        cfg = self.cfg
        text = self.decode(sample.token_ids)
        traj.append(sample.token_ids, 1, sample.logprobs)
        # the forced prefix belongs to the first turn's action ("<search>" + " query </search>")
        action = self.protocol.parse(text if traj.turns else cfg.response_prefix + text, sample.finish)
        traj.turns.append(Turn(text=text, action=action.kind, content=action.content,
                               generated_tokens=len(sample.token_ids), finish=sample.finish))
        outcome = turn_outcome(action.kind, sample.finish == "eos", len(traj.response_ids), len(traj.turns),
                               cfg.max_turns, cfg.max_response_tokens)
        if outcome in ENDINGS:
            self._end(traj, outcome, action.content if outcome == "answer" else None)
        return Decision(outcome, action.content if outcome == "search" else "")

    def observe(self, traj: Trajectory, hits: Sequence[Hit] | None = None) -> list[int] | None:
        """Inject the environment's answer to the last turn (mask 0): the documents of its search
        (`hits`, cut to max_obs_tokens) or, after an invalid action, the note; either is cut to what
        is left of the response. Returns the injected ids, to feed before the next turn, or None
        when they filled the response: the episode then ends ("length")."""
        turn, room = traj.turns[-1], self.cfg.max_response_tokens - len(traj.response_ids)
        if traj.done:
            raise ValueError(f"observe: the episode has ended ({traj.stop_reason})")
        if (hits is None) == (turn.action == "search"):
            raise ValueError(f"observe: a {turn.action} turn " + ("needs the hits of its search" if hits is None
                                                                  else "has no search to show hits for"))
        if hits is None:
            text = turn.text if len(traj.turns) > 1 else self.cfg.response_prefix + turn.text
            ids = self.protocol.note_ids(self.protocol.parse(text, turn.finish))[:room]
        else:
            ids = self.protocol.observation_ids(hits, min(self.cfg.max_obs_tokens, room))
            turn.doc_ids = [h.doc_id for h in hits]
        traj.append(ids, 0)
        turn.observation = self.decode(ids)
        turn.observation_tokens = len(ids)
        if len(traj.response_ids) >= self.cfg.max_response_tokens:
            self._end(traj, "length", None)
            return None
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens (EOS, <|im_end|>) are structure, not text: a reward that checks the tag
        # sequence must not see them after </answer>.
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _end(self, traj: Trajectory, reason: str, answer: str | None) -> None:
        if self.protocol.name != "tags":  # the reward reads the answer by the episode's protocol
            traj.meta["protocol"] = self.protocol.name
        traj.stop_reason = reason
        traj.answer = answer
        traj.response_text = self.decode(traj.response_ids)
