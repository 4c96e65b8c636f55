"""EngineSession (the transformers backend) on a scripted model whose every output is known."""

from __future__ import annotations

import os

import pytest

from fakes import ScriptedLM, char_tokenizer, continue_script, scripted_logprob
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.engine import EngineGenerator

STOP = ("</search>", "</answer>")
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def searcher(context: str) -> str | None:
    """Searches until it has seen information, then answers, then ends its text."""
    if "<information>" not in context:
        return continue_script(context, "<search> cats </search>")
    return continue_script(context, "<answer> dogs </answer>")


def make(tok, policy=searcher, **kw):
    lm = ScriptedLM(tok, policy)
    return lm, EngineGenerator(lm, tok, **kw)


def text(tok, sample):
    return tok.decode(sample.token_ids)


def test_stops_right_after_the_stop_string(tok):
    _, gen = make(tok)
    out = gen.generate([tok.encode("Q?")], 100, STOP, GREEDY)[0]
    assert text(tok, out) == "<search> cats </search>"
    assert (out.finish, out.stop) == ("stop", "</search>")
    assert out.logprobs == pytest.approx([scripted_logprob(len(tok))] * len(out.token_ids), abs=1e-6)


def test_budget_and_eos(tok):
    _, gen = make(tok, lambda c: continue_script(c, "abc"))
    short, full = gen.generate([tok.encode("Q?"), tok.encode("R?")], 2, STOP, GREEDY), None
    assert [text(tok, s) for s in short] == ["ab", "ab"] and short[0].finish == "length"
    full = gen.generate([tok.encode("Q?")], 50, STOP, GREEDY)[0]
    assert full.token_ids[-1] == tok.eos_token_id and full.finish == "eos"
    assert text(tok, full) == "abc<eos>"


def test_rows_grow_unevenly_across_turns(tok):
    lm, gen = make(tok)
    s = gen.session([tok.encode("Q1?"), tok.encode("A longer question?")], GREEDY)
    first = s.generate({0: [], 1: []}, {0: 100, 1: 5}, STOP)
    assert text(tok, first[0]) == "<search> cats </search>"
    assert (text(tok, first[1]), first[1].finish) == ("<sear", "length")
    # row 0 gets an observation, row 1 continues with nothing appended
    info = tok.encode("\n\n<information>x</information>\n\n")
    second = s.generate({0: info, 1: []}, 100, STOP)
    assert text(tok, second[0]) == "<answer> dogs </answer>"
    assert text(tok, second[1]) == "ch> cats </search>"
    assert s.contexts[0] == tok.encode("Q1?") + first[0].token_ids + info + second[0].token_ids
    # each prompt and the observation are encoded in a forward pass of their own (no padding);
    # everything else one token at a time (the observation with the last sampled token, which was
    # not fed yet)
    assert lm.calls[:2] == [(1, len(tok.encode("Q1?"))), (1, len(tok.encode("A longer question?")))]
    assert lm.calls.count((1, len(info) + 1)) == 1
    assert set(lm.calls[2:]) == {(1, len(info) + 1), (2, 1), (1, 1)}


def test_finished_rows_leave_the_batch_and_others_are_unaffected(tok):
    lm, gen = make(tok)
    s = gen.session([tok.encode("Q1?"), tok.encode("Q2?"), tok.encode("Q3?")], GREEDY)
    s.generate({0: [], 1: [], 2: []}, 100, STOP)
    s.finish([1])
    before = len(lm.calls)
    out = s.generate({0: tok.encode("<information>"), 2: []}, 100, STOP)
    decodes = [batch for batch, width in lm.calls[before:] if width == 1]
    assert decodes[0] == 2 and max(decodes) == 2  # a batch of two rows now
    assert text(tok, out[0]) == "<answer> dogs </answer>"
    assert (text(tok, out[2]), out[2].finish) == ("<eos>", "eos")  # its script was done
    with pytest.raises(ValueError, match="row 1 is not live"):
        s.generate({1: []}, 10, STOP)


def test_paused_rows_keep_their_context(tok):
    _, gen = make(tok)
    s = gen.session([tok.encode("Q1?"), tok.encode("Q2?")], GREEDY)
    s.generate({0: []}, 100, STOP)  # row 1 waits
    out = s.generate({1: []}, 100, STOP)
    assert text(tok, out[1]) == "<search> cats </search>"


def test_without_cache_reuse_outputs_are_identical_but_cost_more(tok):
    results, costs = [], []
    for reuse in (True, False):
        _, gen = make(tok, reuse_cache=reuse)
        s = gen.session([tok.encode("Q1?"), tok.encode("Question 2?")], GREEDY)
        a = s.generate({0: [], 1: []}, 100, STOP)
        b = s.generate({0: tok.encode("<information>"), 1: tok.encode("<information>")}, 100, STOP)
        results.append([x.token_ids for x in (*a.values(), *b.values())])
        costs.append(s.forward_tokens)
    assert results[0] == results[1]
    assert costs[1] > costs[0]


def test_context_limit_ends_with_length(tok):
    lm = ScriptedLM(tok, searcher, max_context=6)
    gen = EngineGenerator(lm, tok)
    out = gen.generate([tok.encode("Q?")], 100, STOP, GREEDY)[0]
    assert len(out.token_ids) == 4 and out.finish == "length"
    out = gen.generate([tok.encode("Q12345?")], 100, STOP, GREEDY)[0]  # already past the limit
    assert out.token_ids == [] and out.finish == "length"


def test_empty_prompt_is_an_error(tok):
    _, gen = make(tok)
    with pytest.raises(ValueError, match="at least one token"):
        gen.session([[]], GREEDY)


def test_stopped_rows_are_split_off_while_others_keep_generating(tok):
    # rows whose prompt says "long" write 30 characters, the others end at once
    lm, gen = make(tok, lambda ctx: continue_script(ctx, "x" * 30) if ctx.startswith("long") else None)
    prompts = [tok.encode(p) for p in ("long one", "short", "short too", "also short")]
    s = gen.session(prompts, GREEDY)
    first = s.generate({0: [], 1: [], 2: [], 3: []}, 100, STOP)
    assert text(tok, first[0]) == "x" * 30 + "<eos>" and all(first[r].finish == "eos" for r in (1, 2, 3))
    # each prompt is prefilled on its own; then only the generating row goes through the model
    assert lm.calls == [(1, len(p)) for p in prompts] + [(1, 1)] * 30
    # the stopped rows kept their context: the next turn continues all four correctly
    lm.calls.clear()
    nxt = s.generate({0: tok.encode("?"), 1: tok.encode("long"), 2: [], 3: []}, 100, STOP)
    assert [batch for batch, width in lm.calls if width == 1][0] == 4
    assert s.contexts[1] == prompts[1] + first[1].token_ids + tok.encode("long") + nxt[1].token_ids
    assert nxt[0].finish == "eos" and nxt[2].finish == "eos"


def test_a_new_row_copies_the_prefix_another_row_holds(tok):
    # the scripted model reads each row's context back from the cache, so a wrong copy shows up
    echo = lambda ctx: continue_script(ctx, "<answer> " + ctx[:ctx.index("?") + 1][-6:] + " </answer>")
    lm, gen = make(tok, echo)
    template = "Answer the question. Question: "
    prompts = [tok.encode(template + q) for q in ("who?", "what then?", "who?")]
    s = gen.session(prompts, GREEDY)
    s.generate({0: []}, 100, STOP)
    out = s.generate({1: [], 2: []}, 100, STOP)
    assert text(tok, out[1]) == "<answer>  then? </answer>" and text(tok, out[2]) == "<answer> : who? </answer>"
    # row 1 computed only what follows its common prefix with row 0 (the template and "wh"); row 2
    # (the same prompt as row 0) only its last token
    common = len(os.path.commonprefix([prompts[0], prompts[1]]))
    assert common == len(template) + 2
    assert (1, len(prompts[1]) - common) in lm.calls and (1, 1) in lm.calls
    assert s.shared_tokens == common + len(prompts[2]) - 1
    _, plain = make(tok, echo, share_prefix=False)
    s = plain.session(prompts, GREEDY)
    assert [text(tok, x) for x in s.generate({0: [], 1: [], 2: []}, 100, STOP).values()] == \
        ["<answer> : who? </answer>", "<answer>  then? </answer>", "<answer> : who? </answer>"]
    assert s.shared_tokens == 0


def test_step_api_misuse_is_a_clear_error(tok):
    _, gen = make(tok)
    s = gen.session([tok.encode("Q1?")], GREEDY)
    s.submit(0, [], 100, STOP)
    with pytest.raises(ValueError, match="row 0 is already generating"):
        s.submit(0, [], 100, STOP)
    with pytest.raises(ValueError, match="row 5 is not live"):
        s.submit(5, [], 100, STOP)


def test_a_turn_batched_session_refuses_mixed_stop_strings(tok):
    from searchr1.rollout.scripted import ScriptedGenerator

    s = ScriptedGenerator(tok, [["a"], ["b"]]).session([[1], [2]], GREEDY)
    s.submit(0, [], 10, STOP)
    with pytest.raises(ValueError, match="share their stop strings"):
        s.submit(1, [], 10, ("</answer>",))
