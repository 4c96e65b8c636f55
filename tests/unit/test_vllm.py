"""The vLLM backend's own logic, without vLLM: outputs -> samples, the session's requests, the guards.

What vLLM itself does with those requests is checked against our engine in tests/vllm_backend (make test-vllm)."""

import importlib.util
import sys
from types import SimpleNamespace

import pytest

from searchr1.config import from_dict
from searchr1.errors import ConfigError, MissingDependencyError, SearchR1Error
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.vllm import VLLMSession, import_vllm, to_sample, turn_seed
from searchr1.settings import Config

EOS = {2}


def completion(ids, finish, stop=None, logprobs=True):
    lps = [{t: SimpleNamespace(logprob=-0.5 * (i + 1))} for i, t in enumerate(ids)] if logprobs else None
    return SimpleNamespace(token_ids=ids, logprobs=lps, finish_reason=finish, stop_reason=stop)


def test_to_sample_maps_each_ending():
    s = to_sample(completion([5, 6], "stop", "</search>"), EOS)
    assert (s.token_ids, s.logprobs, s.finish, s.stop) == ([5, 6], [-0.5, -1.0], "stop", "</search>")
    s = to_sample(completion([5, 2], "stop", None), EOS)  # EOS is kept, as our engine keeps it
    assert (s.token_ids, s.finish, s.stop) == ([5, 2], "eos", None)
    assert to_sample(completion([5, 2], "stop", 2), EOS).finish == "eos"  # EOS listed as a stop token id
    assert to_sample(completion([7, 7, 7], "length"), EOS).finish == "length"


@pytest.mark.parametrize("bad", [completion([5], "abort"), completion([5, 6], "stop", None),
                                 completion([5], "length", logprobs=False)])
def test_to_sample_refuses_what_a_rollout_cannot_use(bad):
    with pytest.raises(SearchR1Error):
        to_sample(bad, EOS)


def test_turn_seeds_are_distinct_and_stable():
    seeds = {turn_seed(7, r, t) for r in range(50) for t in range(5)}
    assert len(seeds) == 250 and all(0 <= s < 2**63 for s in seeds)
    assert turn_seed(7, 3, 1) == turn_seed(7, 3, 1) != turn_seed(8, 3, 1)


class FakeEngine:
    """Records requests; each `step` finishes every pending one with tokens [100 + row, 2] (EOS)."""

    def __init__(self):
        self.added, self.pending, self.aborted = [], {}, []

    def add_request(self, rid, prompt, params):
        self.added.append((rid, list(prompt["prompt_token_ids"]), params))
        self.pending[rid] = params

    def step(self):
        out = []
        for rid in list(self.pending):
            row = int(rid.split(":")[1])
            out.append(SimpleNamespace(request_id=rid, finished=True,
                                       outputs=[completion([100 + row, 2], "stop", None)]))
        self.pending.clear()
        return out

    def abort_request(self, ids):
        self.aborted.extend(ids)
        for rid in ids:
            self.pending.pop(rid, None)


def fake_generator(max_context=20):
    engine = FakeEngine()
    return SimpleNamespace(
        engine=engine, max_context=max_context, eos_ids=EOS, after_session=lambda: None,
        _vllm=SimpleNamespace(TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}),
        sampling_params=lambda params, budget, stop, seed: {"max_tokens": budget, "stop": list(stop), "seed": seed})


def test_session_sends_whole_contexts_with_budgets_and_seeds():
    gen = fake_generator(max_context=20)
    s = VLLMSession(gen, [[1, 1, 1], [9]], SamplingParams(temperature=1.0, seed=4), "s0")
    out = s.generate({0: [], 1: [3]}, {0: 5, 1: 50}, ("</search>",))
    assert {r: x.token_ids for r, x in out.items()} == {0: [100, 2], 1: [101, 2]}
    (r0, p0, k0), (r1, p1, k1) = gen.engine.added
    assert (r0, p0, k0) == ("s0:0:0", [1, 1, 1], {"max_tokens": 5, "stop": ["</search>"], "seed": turn_seed(4, 0, 0)})
    assert (p1, k1["max_tokens"]) == ([9, 3], 18)  # the context limit cuts row 1's budget: 20 - 2
    # the next turn carries everything so far: prompt, the sampled turn, the injected tokens
    s.submit(0, [7, 7], 5, ())
    assert gen.engine.added[-1][:2] == ("s0:0:1", [1, 1, 1, 100, 2, 7, 7])
    assert gen.engine.added[-1][2]["seed"] == turn_seed(4, 0, 1)
    assert s.step()[0].token_ids == [100, 2]


def test_a_full_context_ends_the_turn_without_a_request():
    gen = fake_generator(max_context=4)
    s = VLLMSession(gen, [[1, 1, 1]], SamplingParams(temperature=0), "s0")
    s.submit(0, [5], 10, ())
    assert gen.engine.added == []
    (sample,) = s.step().values()
    assert (sample.token_ids, sample.finish) == ([], "length")


def test_session_guards_and_close_aborts_in_flight():
    gen = fake_generator()
    s = VLLMSession(gen, [[1], [2]], SamplingParams(temperature=0), "s3")
    s.submit(0, [], 4, ())
    with pytest.raises(ValueError, match="already generating"):
        s.submit(0, [], 4, ())
    with pytest.raises(ValueError, match="not live"):
        s.submit(5, [], 4, ())
    s.close()
    assert gen.engine.aborted == ["s3:0:0"]
    with pytest.raises(ValueError, match="not live"):
        s.submit(1, [], 4, ())
    with pytest.raises(ValueError, match="at least one token"):
        VLLMSession(gen, [[]], SamplingParams(), "s4")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_is_a_clear_error():
    from searchr1.rollout.backend import open_generator

    with pytest.raises(MissingDependencyError, match="rollout.backend=engine"):
        import_vllm()
    cfg = from_dict(Config, {"rollout": {"backend": "vllm"}, "model": {"device": "cpu"}})
    with pytest.raises(MissingDependencyError, match="needs vLLM"):
        open_generator(cfg)


def test_missing_vllm_message_even_where_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(MissingDependencyError, match="make vllm-env"):
        import_vllm()


def test_rollout_settings_are_checked():
    assert from_dict(Config, {}).rollout.backend == "engine"
    with pytest.raises(ConfigError, match="rollout.backend"):
        from_dict(Config, {"rollout": {"backend": "sglang"}})
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        from_dict(Config, {"rollout": {"vllm": {"gpu_memory_utilization": 1.5}}})
    with pytest.raises(ConfigError, match="rollout.vllm.swap"):
        from_dict(Config, {"rollout": {"vllm": {"swap": 4}}})


def test_sleep_mode_is_refused_on_cpu_before_vllm_loads():
    from searchr1.rollout.settings import VLLMConfig
    from searchr1.rollout.vllm import VLLMGenerator

    with pytest.raises(SearchR1Error, match="CUDA feature"):
        VLLMGenerator("unused", None, device="cpu", cfg=VLLMConfig(sleep=True))


def test_cpu_bind_syntax():
    from searchr1.rollout.vllm import cpu_bind

    assert cpu_bind([0, 1]) == "0-1"
    assert cpu_bind([5, 0, 1, 2]) == "0-2,5"
    assert cpu_bind([3]) == "3"


def test_weights_travel_in_the_engines_dtype():
    import torch

    from searchr1.rollout.vllm import engine_weights

    named = [("w", torch.ones(2, 2)), ("positions", torch.arange(3))]
    out = engine_weights(named, torch.bfloat16)
    assert out["w"].dtype == torch.bfloat16 and out["positions"].dtype == torch.int64
    assert sum(t.numel() * t.element_size() for t in out.values()) == 8 + 24


def test_weights_go_to_a_temporary_directory_when_dev_shm_is_small(tmp_path, monkeypatch):
    import shutil as _shutil
    import tempfile

    import searchr1.rollout.vllm as v

    shm, disk = tmp_path / "shm", tmp_path / "disk"
    shm.mkdir(), disk.mkdir()
    real = _shutil.disk_usage
    monkeypatch.setattr(v.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=64 << 20 if str(p) == str(shm) else 1 << 40))
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    assert v.weights_folder(1 << 20, (str(shm), None)).parent == shm  # small weights: RAM
    assert v.weights_folder(100 << 20, (str(shm), None)).parent == disk  # Docker's 64 MB /dev/shm: the disk
    monkeypatch.setattr(v.shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    with pytest.raises(SearchR1Error, match="no room for the policy's weights"):
        v.weights_folder(1 << 20, (str(shm), None))


def test_a_sleeping_engine_wakes_its_weights_reloads_then_its_kv_cache(monkeypatch):
    import torch

    from searchr1.rollout.vllm import VLLMGenerator

    calls = []

    class FakeLLM:
        def wake_up(self, tags=None):
            calls.append(("wake_up", tuple(tags or ())))

        def collective_rpc(self, fn, kwargs):
            calls.append(("reload", sorted(kwargs)))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache",))

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    gen = object.__new__(VLLMGenerator)
    gen.llm, gen.sleeping, gen._stale, gen.in_process = FakeLLM(), True, True, True
    gen.source, gen.weight_sync_seconds = torch.nn.Linear(2, 2), 0.0
    gen._wake_up()
    assert calls == [("empty_cache",), ("wake_up", ("weights",)), ("reload", ["weights"]), ("reset_prefix_cache",),
                     ("wake_up", ("kv_cache",))]
    assert not gen.sleeping and not gen._stale


# ----------------------------------------------------------------------------- weight reload by name (issue 24, item 7)


class RecordingLLM:
    """Stands in for `vllm.LLM`: records its arguments and the collective calls made on it."""

    def __init__(self, **kwargs):
        self.kwargs, self.rpcs, self.resets = kwargs, [], 0
        import torch

        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=64, dtype=torch.float32))

    def collective_rpc(self, method, kwargs=None):
        self.rpcs.append((method, {k: v if isinstance(v, str) else list(v) for k, v in (kwargs or {}).items()}))

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    import types

    vllm = types.ModuleType("vllm")
    vllm.LLM = RecordingLLM
    params = types.ModuleType("vllm.sampling_params")
    params.RequestOutputKind = SimpleNamespace(FINAL_ONLY="final")
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params)
    # the generator sets vLLM's variables in os.environ: these are restored after the test
    for name in ("VLLM_ALLOW_INSECURE_SERIALIZATION", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE",
                 "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def linear_source():
    import torch

    source = torch.nn.Linear(2, 1, bias=False)
    source.generation_config = SimpleNamespace(eos_token_id=2)
    return source


@pytest.mark.parametrize("in_process", ["yes", "no"])
def test_weights_reload_through_a_named_worker_method_without_insecure_serialization(fake_vllm, in_process):
    import importlib
    import os

    from searchr1.rollout.settings import VLLMConfig
    from searchr1.rollout.vllm import RELOAD_METHOD, WORKER_EXTENSION, VLLMGenerator, WeightReload

    gen = VLLMGenerator("model-dir", None, device="cpu", cfg=VLLMConfig(in_process=in_process),
                        source=linear_source())
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ
    assert gen.llm.kwargs["worker_extension_cls"] == WORKER_EXTENSION
    module, _, name = WORKER_EXTENSION.rpartition(".")
    assert getattr(importlib.import_module(module), name) is WeightReload  # what vLLM's worker imports
    gen.load_weights()
    [(method, kwargs)] = gen.llm.rpcs
    assert method == RELOAD_METHOD == "searchr1_reload" and callable(getattr(WeightReload, method))
    if in_process == "yes":
        assert [n for n, _ in kwargs["weights"]] == ["weight"]  # the tensors themselves, in process
    else:
        assert set(kwargs) == {"weights_path"} and isinstance(kwargs["weights_path"], str)
    assert gen.llm.resets == 1
