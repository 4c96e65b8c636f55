"""The agent's protocols (searchr1.rollout.protocols) through the episode step, on a test tokenizer
with a Qwen3-style chat template (tests/fakes.py): every token checked against the template's own
rendering of the same conversation."""

import pytest

from fakes import char_tokenizer, chat_tokenizer
from searchr1.errors import ConfigError
from searchr1.eval.metrics import score_trajectory
from searchr1.protocol import STOP_STRINGS, build_prompt, format_documents
from searchr1.retrieval.base import Hit
from searchr1.rewards import compute_score
from searchr1.rollout.agent import new_trajectory
from searchr1.rollout.generator import Sample
from searchr1.rollout.protocols import TagsProtocol, ToolCallProtocol, make_protocol, tool_message_framing
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep
from searchr1.toolcall import SEARCH_TOOL

HITS = [Hit("d1", "Paris", "Paris is the capital of France.", 1.0)]
CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def sample(tok, text, finish):
    ids = ids_of(tok, text)
    return Sample(ids, [-0.1] * len(ids), finish, "</tool_call>" if finish == "stop" else None)


def tool_call_step(tok, **cfg):
    return EpisodeStep(tok, AgentConfig(protocol="tool_call", **cfg))


def start(tok):
    prompt = build_prompt("Capital of France", tok, template="{question}", tools=[SEARCH_TOOL])
    return new_trajectory(tok, prompt, "Capital of France", ["Paris"]), prompt


def expected_mask(tok, rendered: str, generated: list[str]) -> tuple[list[int], list[int]]:
    """(ids, mask) of the template's rendering, mask 1 on the tokens inside the generated texts
    (found in order in the rendering), 0 on every other token."""
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    spans, pos = [], 0
    for text in generated:
        at = rendered.index(text, pos)
        spans.append((at, at + len(text)))
        pos = at + len(text)
    mask = [int(any(a <= s and e <= b for a, b in spans)) for s, e in enc["offset_mapping"]]
    return enc["input_ids"], mask


@pytest.mark.parametrize("think_prompt", [False, True])
def test_a_tool_call_episode_is_the_templates_conversation_token_by_token(think_prompt):
    tok = chat_tokenizer(think_prompt)
    step, (traj, prompt) = tool_call_step(tok), start(tok)
    # the policy writes its thinking; a template that opens the block leaves only its end to write
    opening = "" if think_prompt else "<think>\n"
    turn1 = opening + "I need to look it up.\n</think>\n\n" + CALL
    turn2 = opening + "It says Paris; not <answer>Lyon</answer>.\n</think>\n\n<answer> Paris </answer><|im_end|>"
    assert step.stop_strings == ("</tool_call>",)
    decision = step.turn(traj, sample(tok, turn1, "stop"))
    assert (decision.outcome, decision.query) == ("search", "capital of France")
    injected = step.observe(traj, HITS)
    assert step.turn(traj, sample(tok, turn2, "eos")).done
    assert (traj.stop_reason, traj.answer, traj.num_searches) == ("answer", "Paris", 1)

    call = {"type": "function", "function": {"name": "search", "arguments": {"query": "capital of France"}}}
    conversation = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "reasoning_content": "I need to look it up.", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "search", "content": format_documents(HITS).strip()},
        {"role": "assistant", "reasoning_content": "It says Paris; not <answer>Lyon</answer>.",
         "content": "<answer> Paris </answer>"},
    ]
    rendered = tok.apply_chat_template(conversation, tools=[SEARCH_TOOL], tokenize=False)
    rendered = rendered[:rendered.rindex("<|im_end|>") + len("<|im_end|>")]  # the episode ends at the policy's EOS
    assert rendered.startswith(prompt)
    ids, mask = expected_mask(tok, rendered, [turn1, turn2])
    assert traj.prompt_ids + traj.response_ids == ids
    assert [0] * len(traj.prompt_ids) + traj.policy_mask == mask
    # what the step injected is the template's tool message, from the end of the call to the next turn
    head, tail = tool_message_framing(tok)
    assert tok.decode(injected) == head + format_documents(HITS).strip() + tail
    assert tail.endswith("<|im_start|>assistant\n" + ("<think>\n" if think_prompt else ""))
    # the reward reads the answer only: not the thinking's <answer>Lyon</answer>, not the documents
    assert traj.meta["protocol"] == "tool_call"
    assert compute_score(traj.response_text, ["Paris"], protocol="tool_call") == 1.0
    assert compute_score(traj.response_text, ["Lyon"], protocol="tool_call") == 0.0
    assert compute_score(traj.response_text, ["Paris"], protocol="tool_call", format_reward=True) == 1.0
    scores = score_trajectory(traj)
    assert (scores["answer"], scores["em"], scores["valid_format"]) == ("Paris", 1.0, True)


def test_a_malformed_call_gets_the_note_as_a_tool_message_with_mask_0():
    tok = chat_tokenizer()
    step, (traj, _) = tool_call_step(tok), start(tok)
    decision = step.turn(traj, sample(tok, '<tool_call>\n{"name": "search", "arguments": {"query": \n</tool_call>', "stop"))
    assert decision.outcome == "invalid" and traj.turns[-1].action == "invalid"
    before = len(traj.response_ids)
    ids = step.observe(traj, None)
    head, tail = tool_message_framing(tok)
    text = tok.decode(ids)
    assert text.startswith(head + "Invalid action: the tool call is not valid JSON") and text.endswith(tail)
    assert traj.policy_mask[before:] == [0] * len(ids)
    # an unknown tool, then an answer
    step.turn(traj, sample(tok, '<tool_call>{"name": "browse", "arguments": {"query": "x"}}</tool_call>', "stop"))
    assert "unknown tool 'browse'" in tok.decode(step.observe(traj, None))
    step.turn(traj, sample(tok, "Paris<|im_end|>", "eos"))
    assert (traj.stop_reason, traj.answer) == ("answer", "Paris")
    assert [t.action for t in traj.turns] == ["invalid", "invalid", "answer"]
    assert compute_score(traj.response_text, ["Paris"], protocol="tool_call") == 1.0
    assert compute_score(traj.response_text, ["Paris"], protocol="tool_call", format_reward=True) == 0.8


def test_a_message_cut_by_the_turn_budget_is_invalid_and_eos_without_an_answer_ends_the_episode():
    tok = chat_tokenizer()
    step, (traj, _) = tool_call_step(tok), start(tok)
    assert step.turn(traj, sample(tok, "Let me think about", "length")).outcome == "invalid"
    assert "without a tool call or a finished message" in tok.decode(step.observe(traj, None))
    assert step.turn(traj, sample(tok, "<think>hmm</think><|im_end|>", "eos")).outcome == "eos"
    assert traj.answer is None and compute_score(traj.response_text, ["hmm"], protocol="tool_call") == 0.0


def test_tool_observations_are_cut_keeping_the_templates_framing():
    tok = chat_tokenizer()
    head, tail = tool_message_framing(tok)
    n = len(ids_of(tok, head)) + len(ids_of(tok, tail)) + 5
    step, (traj, _) = tool_call_step(tok, max_obs_tokens=n), start(tok)
    step.turn(traj, sample(tok, CALL, "stop"))
    assert tok.decode(step.observe(traj, HITS)) == head + "Doc 1" + tail


def test_the_tags_protocol_is_the_default_and_unchanged():
    tok = char_tokenizer()
    step = EpisodeStep(tok, AgentConfig())
    assert isinstance(step.protocol, TagsProtocol) and step.stop_strings == STOP_STRINGS
    traj = new_trajectory(tok, "Q: x\n")
    step.turn(traj, Sample(ids_of(tok, "<answer> x </answer>"), [0.0] * 20, "stop", "</answer>"))
    assert traj.answer == "x" and "protocol" not in traj.meta


def test_config_and_template_errors():
    assert AgentConfig(protocol="tool_call").template == "tool_call"  # the tags instruction would mislead
    assert AgentConfig(protocol="tool_call", template="{question}").template == "{question}"
    assert AgentConfig().template == "search-r1"
    with pytest.raises(ConfigError, match="chat template"):
        ToolCallProtocol(char_tokenizer())  # no chat template
    plain = char_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(ConfigError, match="Hermes/Qwen"):
        ToolCallProtocol(plain)  # renders no tool calls
    with pytest.raises(ConfigError, match="tags or tool_call"):
        make_protocol("json", plain)
    with pytest.raises(ValueError, match="chat template"):
        build_prompt("q", char_tokenizer(), chat=False, tools=[SEARCH_TOOL])
