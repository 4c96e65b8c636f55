"""The `Generator` contract: every engine has `session`, `weights_updated`, `close` and
`weight_sync_seconds`, so the trainer and evaluation call them without asking."""

from __future__ import annotations

import pytest

from fakes import ScriptedLM, SyncRecordingGenerator, char_tokenizer, continue_script
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.generator import Generator, GeneratorBase, SamplingParams
from searchr1.rollout.scripted import ScriptedGenerator
from searchr1.rollout.vllm import VLLMGenerator

# every member the protocol declares, but the tokenizer (set per instance)
CONTRACT = sorted({n for n in vars(Generator) if not n.startswith("_")} | set(Generator.__annotations__) - {"tokenizer"})
GENERATORS = [EngineGenerator, VLLMGenerator, ScriptedGenerator, SyncRecordingGenerator]


def test_the_contract_is_what_the_trainer_calls():
    assert CONTRACT == ["close", "session", "weight_sync_seconds", "weights_updated"]


@pytest.mark.parametrize("cls", GENERATORS, ids=lambda c: c.__name__)
def test_every_generator_class_has_the_whole_contract(cls):
    assert issubclass(cls, GeneratorBase)
    for name in CONTRACT:
        assert hasattr(cls, name), name
    for name in ("session", "weights_updated", "close"):
        assert callable(getattr(cls, name)), name
    assert cls.weight_sync_seconds == 0.0  # the total before any load


def test_only_the_engine_with_its_own_weights_overrides_the_defaults():
    for name in ("weights_updated", "close"):
        assert getattr(VLLMGenerator, name) is not getattr(GeneratorBase, name)
        for cls in (EngineGenerator, ScriptedGenerator):
            assert getattr(cls, name) is getattr(GeneratorBase, name)


def test_engines_that_run_the_module_itself_sync_nothing_and_keep_working():
    tok = char_tokenizer()
    prompt = tok("Q? ", add_special_tokens=False)["input_ids"]
    ours = EngineGenerator(ScriptedLM(tok, lambda ctx: continue_script(ctx, "<answer> a </answer>")), tok)
    scripted = ScriptedGenerator(tok, [["<answer> a </answer>"]])
    for gen in (ours, scripted):
        assert isinstance(gen, Generator)
        gen.weights_updated()
        assert gen.weight_sync_seconds == 0.0
        session = gen.session([prompt], SamplingParams(temperature=0))
        out = session.generate({0: []}, 32, stop=("</answer>",))
        session.close()
        assert tok.decode(out[0].token_ids) == "<answer> a </answer>" and out[0].finish == "stop"
        gen.close()
