"""Multi-turn rollout benchmark: generation engines and schedules, same model, same questions, same run.

    python benchmarks/rollout.py --model runs/algorithms/sft-model          # 128 NQ dev questions, pool 16
    python benchmarks/rollout.py --arms search-r1,continuous --questions 16  # against Search-R1's loop
    python benchmarks/rollout.py --resume ...                                # keeps the arms already measured

Every arm runs the same agent (`searchr1.rollout.agent`) over the same BM25 index of wiki18_mini
(built into benchmarks/.cache if missing) with greedy decoding, max 4 turns, 500 new tokens per
turn, top-3 passages, on the same questions. They differ in the engine and the schedule:

  search-r1   like Search-R1's loop (search_r1/llm_agent/generation.py), in fixed batches of --pool:
              each turn generates up to 500 tokens for every row of the batch (EOS still ends a row),
              cuts the text after the first closing tag afterwards, and re-encodes the whole context
              at the start of every turn.
  turn        the engine before continuous batching (benchmarks/_turn_engine.py), fixed batches of
              --pool: rows stop at </search>, </answer> or EOS and keep their KV cache, but a turn
              ends when its slowest row does, and the next batch starts when the whole batch is done.
  fixed       the continuous engine, in fixed batches of --pool: a row that stops gets its documents
              and goes on at once, but no new question joins until the whole batch is done.
  continuous  the continuous engine with one pool of --pool over all the questions: when an
              episode ends, the next question's episode joins the running cache.
  continuous-compiled  the same, with the decode step compiled (EngineGenerator(compile_decode=
              "inductor"), torch.compile with dynamic shapes); its compilation (a warm-up over one
              row and two rows) is reported apart as the engine start-up, not counted in the wall time.
  vllm        vLLM (rollout.backend=vllm, `searchr1.rollout.vllm`) with the same pool of --pool
              episodes over all the questions, fp32 like the others; run it in the vLLM environment
              (make vllm-env; .venv-vllm/bin/python benchmarks/rollout.py --arms continuous,vllm).
              Its engine start-up (minutes on CPU: compilation, KV-cache profiling) is reported
              apart and not counted in the wall time, as our engine's model load is not.

Reported per arm: wall time, generated tokens kept per second, questions per second, decode tokens
per second in passes with the pool full (continuous engine only), the tail (continuous: from when
the queue emptied and the pool stopped being full to the end), and beside them the matmul ceiling:
the time of every nn.Linear of the model on --pool random rows, the most a decode pass of --pool
rows could do. Greedy trajectories are compared token for token between arms; they should agree
up to float round-off in near-ties.

--prime TEXT forces every response to start with TEXT (agent.response_prefix, injected with loss
mask 0), e.g. --prime "<search>" for a model that never opens a tag itself (SmolLM2-135M-Instruct).
The warmed-up model of the demo (searchr1-demo/sft-model) searches on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CACHE, SHARED_DATA, machine, save_json, table  # noqa: E402
from searchr1.rollout.generator import TurnBatchedSession  # noqa: E402

STOP = ("</search>", "</answer>")


class SearchR1StyleSession(TurnBatchedSession):
    """Wraps an `EngineSession` built with reuse_cache=False: fixed-length turns, truncated afterwards."""

    def __init__(self, inner, tokenizer, turn_tokens: int) -> None:
        super().__init__()
        self.inner, self.tokenizer, self.turn_tokens = inner, tokenizer, turn_tokens
        self.discarded = 0

    def generate(self, appended, max_new_tokens, stop=()):
        budget = {row: self.turn_tokens for row in appended}
        out = self.inner.generate(appended, budget, stop=())
        for row, sample in out.items():
            cut = self._cut(sample.token_ids, stop)
            limit = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row]
            cut = min(cut, limit) if cut is not None else min(len(sample.token_ids), limit)
            if cut < len(sample.token_ids):
                extra = len(sample.token_ids) - cut
                self.discarded += extra
                del self.inner.contexts[row][-extra:]  # the next turn re-encodes from the cut text
                if sample.finish != "stop":
                    hit = self._hit(sample.token_ids[:cut], stop)
                    sample.finish, sample.stop = ("stop", hit) if hit else ("length", None)
                del sample.token_ids[cut:], sample.logprobs[cut:]
        return out

    def _hit(self, ids, stop):
        text = self.tokenizer.decode(ids)
        return next((s for s in stop if s in text), None)

    def _cut(self, ids, stop) -> int | None:
        """Length of the shortest prefix whose text contains a stop string (None: no stop string)."""
        if not stop or not self._hit(ids, stop):
            return None
        lo, hi = 1, len(ids)
        while lo < hi:  # binary search: containing a stop string is monotone in the prefix length
            mid = (lo + hi) // 2
            if self._hit(ids[:mid], stop):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def finish(self, rows):
        self.inner.finish(rows)

    def close(self):
        self.inner.close()


class SearchR1StyleGenerator:
    def __init__(self, hf_generator, turn_tokens: int) -> None:
        self.inner, self.turn_tokens = hf_generator, turn_tokens
        self.tokenizer = hf_generator.tokenizer
        self.last = None

    def session(self, prompts, params):
        self.last = SearchR1StyleSession(self.inner.session(prompts, params), self.tokenizer, self.turn_tokens)
        return self.last


class Recording:
    """A generator that keeps its last session, so the benchmark can read the engine's counters."""

    def __init__(self, inner) -> None:
        self.inner, self.tokenizer, self.last = inner, inner.tokenizer, None

    def session(self, prompts, params):
        self.last = self.inner.session(prompts, params)
        return self.last


def attention_seconds(model, rows: int, kv_len: int, repeats: int = 7) -> float:
    """Seconds of one decode pass's attention alone: SDPA of one query per row over `kv_len` fp32
    keys and values in every layer, at the model's head counts (grouped query heads packed as
    transformers packs them), median of `repeats`."""
    import torch

    c = model.config
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    q = torch.randn(rows, kv_heads, heads // kv_heads, dim)
    k, v = torch.randn(rows, kv_heads, kv_len, dim), torch.randn(rows, kv_heads, kv_len, dim)
    mask = torch.ones(rows, 1, 1, kv_len, dtype=torch.bool)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for _ in range(c.num_hidden_layers):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def linear_ceiling(model, rows: int, repeats: int = 7) -> float:
    """Tokens/s if a decode pass of `rows` rows cost only its matrix products: every nn.Linear of
    the model (LM head included) applied to `rows` random rows, median of `repeats` timed passes."""
    import torch

    shapes = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in shapes}
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for w in shapes:
                torch.nn.functional.linear(xs[w.shape[1]], w)
            times.append(time.perf_counter() - t0)
    return rows / statistics.median(times[1:])


def open_bm25(corpus: Path):
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.local import open_index
    from searchr1.retrieval.settings import IndexConfig, RetrieverConfig

    index = CACHE / "wiki18_mini"
    if not (index / "bm25").is_dir():
        index = CACHE / "wiki18_mini-bm25"
        if not (index / "index.json").exists():
            build_index(IndexConfig(corpus=str(corpus), dir=str(index), methods=["bm25"]), progress=True)
    return open_index(RetrieverConfig(index=str(index), method="bm25"))


ARMS = ("search-r1", "turn", "fixed", "continuous-unshared", "continuous", "continuous-compiled", "vllm")
POOLED = ("continuous", "continuous-unshared", "continuous-compiled", "vllm")  # one pool over all the questions


def fingerprint(trajectory) -> str:
    """A short digest of [response ids, stop reason] (kept as is if it already is one)."""
    if isinstance(trajectory, str):
        return trajectory
    return hashlib.sha1(json.dumps(trajectory).encode()).hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--pool", type=int, default=16, help="episodes decoded together (fixed batch size, or pool)")
    p.add_argument("--arms", default="turn,continuous", help=f"comma-separated, from {','.join(ARMS)}; the "
                                                                "first is the baseline of the ratios")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--turn-tokens", type=int, default=500)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    p.add_argument("--prime", default="", help="text every response starts with (e.g. '<search>')")
    p.add_argument("--resume", action="store_true", help="keep the arms already in --out (same settings)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollout.json")
    args = p.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        p.error(f"unknown arms {unknown}; choose from {ARMS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from _turn_engine import TurnEngine
    from searchr1.data.qa import read_qa
    from searchr1.protocol import build_prompt
    from searchr1.rollout.agent import Agent, new_trajectory
    from searchr1.rollout.generator import SamplingParams
    from searchr1.rollout.engine import EngineGenerator
    from searchr1.rollout.settings import AgentConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# searchr1 rollout benchmark — {time.strftime('%Y-%m-%d')} — {machine()}, torch threads "
          f"{torch.get_num_threads()}")
    ours = EngineGenerator.from_pretrained(args.model, device="cpu")
    tok = ours.tokenizer
    retriever = open_bm25(SHARED_DATA / "corpus" / "wiki18_mini.jsonl")
    questions = read_qa(SHARED_DATA / "nq" / "NQ-open.dev.jsonl", args.questions)
    cfg = AgentConfig(max_turns=args.max_turns, max_turn_tokens=args.turn_tokens, response_prefix=args.prime)
    settings = {"model": args.model, "questions": len(questions), "pool": args.pool, "turn_tokens": args.turn_tokens,
                "max_turns": args.max_turns, "prime": args.prime, "threads": torch.get_num_threads()}
    saved = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    results = saved.get("arms", {}) if saved.get("settings") == settings else {}

    engines, startup = {}, {}

    def generator(arm):
        if arm == "continuous-compiled":
            if arm not in engines:
                engines[arm] = EngineGenerator(ours.model, tok, compile_decode="inductor")
                start = time.perf_counter()
                for rows in (1, 2):  # one graph for a single row, one for several (dynamic shapes)
                    engines[arm].generate([tok.encode("warm-up")] * rows, 4, (), SamplingParams(temperature=0))
                startup[arm] = time.perf_counter() - start
                print(f"{arm}: decode step compiled in {startup[arm]:.0f} s", flush=True)
            return Recording(engines[arm])
        if arm == "vllm":
            if "vllm" not in engines:
                from searchr1.modelhub import resolve_causal_lm
                from searchr1.rollout.vllm import VLLMGenerator

                engines["vllm"] = VLLMGenerator(resolve_causal_lm(args.model), tok, device="cpu", dtype="float32")
                print(f"vllm: engine started in {engines['vllm'].startup_seconds:.0f} s", flush=True)
            return Recording(engines["vllm"])
        if arm == "search-r1":
            return SearchR1StyleGenerator(EngineGenerator(ours.model, tok, reuse_cache=False), args.turn_tokens)
        if arm == "turn":
            return Recording(TurnEngine(ours))
        return Recording(EngineGenerator(ours.model, tok, share_prefix=arm != "continuous-unshared"))

    def rollout(arm):
        gen = generator(arm)
        trajs = [new_trajectory(tok, build_prompt(q["question"], tok), q["question"], q["golden_answers"], q["id"])
                 for q in questions]
        agent, greedy, total = Agent(gen, retriever, cfg), SamplingParams(temperature=0), {}
        chunks = ([trajs] if arm in POOLED else
                  [trajs[i:i + args.pool] for i in range(0, len(trajs), args.pool)])
        decode, prefill_s, prefill_tokens, shared_tokens = {}, 0.0, 0, 0
        for chunk in chunks:
            stats = agent.run(chunk, greedy, pool=args.pool)
            for k, v in stats.as_dict().items():
                total[k] = total.get(k, 0) + v
            session = getattr(gen.last, "inner", gen.last)
            for width, record in getattr(session, "decode_passes", {}).items():
                decode.setdefault(width, [0, 0.0, 0])
                for k, v in enumerate(record):
                    decode[width][k] += v
            prefill_s += getattr(session, "prefill_seconds", 0.0)
            prefill_tokens += getattr(session, "prefill_tokens", 0)
            shared_tokens += getattr(session, "shared_tokens", 0)
        full = decode.get(args.pool)
        return trajs, {
            "seconds": total["seconds"], "generate_s": total["generate_seconds"],
            "retrieve_s": total["retrieve_seconds"], "useful_tokens": total["generated_tokens"],
            "injected": total["injected_tokens"], "searches": total["searches"], "turns": total["turns"],
            "discarded": gen.last.discarded if arm == "search-r1" else 0,
            "drain_s": total["drain_seconds"] if arm in POOLED else None,
            "engine_startup_s": engines["vllm"].startup_seconds if arm == "vllm" else startup.get(arm),
            "prefill_s": prefill_s if decode else None, "prefill_tokens": prefill_tokens,
            "shared_prefix_tokens": shared_tokens,
            "full_pool_mean_kv_len": full[2] / full[0] if full and len(full) > 2 else None,
            "full_pool_decode_tok_s": full[0] * args.pool / full[1] if full else None,
            "decode_passes": {str(w): v for w, v in sorted(decode.items())},
        }

    def save(extra=None):
        save_json(args.out, {"settings": settings, "arms": results, **(extra or {})})

    trajectories = {}
    for arm in arms:
        if arm in results:
            print(f"{arm}: kept from {args.out}")
            trajectories[arm] = [fingerprint(t) for t in results[arm]["trajectories"]]
            results[arm]["trajectories"] = trajectories[arm]
            continue
        runs = []
        for _ in range(args.repeats):
            trajs, r = rollout(arm)
            runs.append(r)
            print(f"{arm}: {r['seconds']:.1f} s, {r['useful_tokens']} tokens", flush=True)
        med = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[-1][k]
               for k in runs[0]}
        trajectories[arm] = [fingerprint([t.response_ids, t.stop_reason]) for t in trajs]
        results[arm] = {"runs": runs, "median": med, "trajectories": trajectories[arm],
                        "stops": {r: sum(t.stop_reason == r for t in trajs) for r in ("answer", "eos", "max_turns", "length")}}
        save()

    ceiling = {rows: linear_ceiling(ours.model, rows) for rows in (1, args.pool)}
    base = results[arms[0]]["median"]
    rows = []
    for arm in arms:
        m = results[arm]["median"]
        rows.append([arm, m["seconds"], m["generate_s"], m["retrieve_s"], int(m["useful_tokens"]),
                     m["useful_tokens"] / m["seconds"], len(questions) / m["seconds"],
                     "" if m["full_pool_decode_tok_s"] is None else f"{m['full_pool_decode_tok_s']:.0f}",
                     "" if m["drain_s"] is None else f"{m['drain_s']:.0f} ({m['drain_s'] / m['seconds']:.0%})",
                     int(m["searches"]), f"{base['seconds'] / m['seconds']:.2f}x"])
    primed = f", responses start with {args.prime!r}" if args.prime else ""
    print(table(f"{len(questions)} NQ dev questions, {args.model}, greedy, pool/batch {args.pool}, max "
                f"{args.max_turns} turns x {args.turn_tokens} tokens{primed} (median of {args.repeats})",
                ["arm", "wall s", "generate s", "retrieve s", "kept tokens", "kept tokens/s", "questions/s",
                 f"decode tok/s at {args.pool} rows", "tail s (share)", "searches", f"speed-up vs {arms[0]}"], rows))
    print(f"\nmatmul ceiling (every nn.Linear of the model, fp32, median of 7): {ceiling[args.pool]:.0f} tokens/s "
          f"at {args.pool} rows, {ceiling[1]:.0f} at 1 row")
    floors = {}
    for arm in arms:
        kv = results[arm]["median"].get("full_pool_mean_kv_len")
        if kv:
            att = attention_seconds(ours.model, args.pool, int(kv))
            floors[arm] = {"kv_len": kv, "attention_s": att,
                           "tok_s": args.pool / (args.pool / ceiling[args.pool] + att)}
            print(f"{arm}: full-pool passes read {kv:.0f} keys per row on average; their attention alone takes "
                  f"{att * 1e3:.0f} ms a pass (SDPA, fp32, model's heads), so matmuls + attention allow at most "
                  f"{floors[arm]['tok_s']:.0f} tokens/s at {args.pool} rows")
    for arm in arms[1:]:
        same = sum(a == b for a, b in zip(trajectories[arms[0]], trajectories[arm]))
        print(f"identical trajectories (greedy), {arm} vs {arms[0]}: {same}/{len(questions)}")
    print(f"stop reasons: { {arm: results[arm]['stops'] for arm in arms} }")
    save({"ceiling_tok_s": {str(k): v for k, v in ceiling.items()}, "matmul_attention_floor": floors})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
