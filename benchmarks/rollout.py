"""Multi-turn rollout benchmark: our engine against a Search-R1-style loop, same model, same run.

    python benchmarks/rollout.py                               # SmolLM2-135M, 16 NQ questions, 3 repeats
    python benchmarks/rollout.py --questions 8 --repeats 2 --model DIR

Both loops run the same agent (`searchr1.rollout.agent`) over the same BM25 index of wiki18_mini
(built into benchmarks/.cache if missing) with greedy decoding, max 4 turns, 500 new tokens
per turn, top-3 passages. They differ only in the generation backend:

  ours       stops each row at </search>, </answer> or EOS; keeps every row's KV cache across
             turns, so a turn encodes only the appended <information> tokens.
  search-r1  like Search-R1's loop (search_r1/llm_agent/generation.py): each turn generates up to
             500 tokens per row (EOS still ends a row), cuts the text after the first closing tag
             afterwards, and re-encodes the whole context at the start of every turn.

--prime TEXT forces every response to start with TEXT (agent.response_prefix, injected with loss
mask 0), e.g. --prime "<search>": the response then starts inside a search tag. SmolLM2-135M never opens a tag on its own, so without it
no turn ends at a tag and the loops differ only in cache reuse; with it every episode searches
at least once, the multi-turn case the engine is built for. The table says which was used.

Reported: wall time, useful tokens (those kept in the trajectories) per second, tokens pushed
through the model (incl. discarded ones and re-encoded context), and how many trajectories are
identical between the two loops (greedy: they should be, up to float round-off in long
ties).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CACHE, SHARED_DATA, machine, save_json, table  # noqa: E402

STOP = ("</search>", "</answer>")


class SearchR1StyleSession:
    """Wraps an `HFSession` built with reuse_cache=False: fixed-length turns, truncated afterwards."""

    def __init__(self, inner, tokenizer, turn_tokens: int) -> None:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--turn-tokens", type=int, default=500)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    p.add_argument("--prime", default="", help="text every response starts with (e.g. '<search>')")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollout.json")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from searchr1.data.qa import read_qa
    from searchr1.protocol import build_prompt
    from searchr1.rollout.agent import Agent, new_trajectory
    from searchr1.rollout.generator import SamplingParams
    from searchr1.rollout.hf import HFGenerator
    from searchr1.rollout.settings import AgentConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# searchr1 rollout benchmark — {time.strftime('%Y-%m-%d')} — {machine()}, torch threads "
          f"{torch.get_num_threads()}")
    ours = HFGenerator.from_pretrained(args.model, device="cpu")
    tok = ours.tokenizer
    baseline = SearchR1StyleGenerator(HFGenerator(ours.model, tok, reuse_cache=False), args.turn_tokens)
    retriever = open_bm25(SHARED_DATA / "corpus" / "wiki18_mini.jsonl")
    questions = read_qa(SHARED_DATA / "nq" / "NQ-open.dev.jsonl", args.questions)
    cfg = AgentConfig(max_turns=args.max_turns, max_turn_tokens=args.turn_tokens, response_prefix=args.prime)

    def rollout(generator):
        trajs = [new_trajectory(tok, build_prompt(q["question"], tok), q["question"], q["golden_answers"], q["id"])
                 for q in questions]
        stats = Agent(generator, retriever, cfg).run(trajs, SamplingParams(temperature=0))
        return trajs, stats

    runs = {"ours": [], "search-r1": []}
    trajectories = {}
    for _ in range(args.repeats):
        for name, gen in (("ours", ours), ("search-r1", baseline)):
            trajs, stats = rollout(gen)
            runs[name].append({"seconds": stats.seconds, "generate_s": stats.generate_seconds,
                               "retrieve_s": stats.retrieve_seconds, "useful_tokens": stats.generated_tokens,
                               "injected": stats.injected_tokens, "searches": stats.searches,
                               "discarded": gen.last.discarded if name == "search-r1" else 0})
            trajectories[name] = trajs
    identical = sum(a.response_ids == b.response_ids for a, b in zip(trajectories["ours"], trajectories["search-r1"]))
    same_stop = [(a, b) for a, b in zip(trajectories["ours"], trajectories["search-r1"])
                 if a.stop_reason == b.stop_reason and a.turns and b.turns]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    base_s = med["search-r1"]["seconds"]
    rows = []
    for name in ("search-r1", "ours"):
        m = med[name]
        rows.append([name, m["seconds"], m["generate_s"], m["retrieve_s"], int(m["useful_tokens"]),
                     m["useful_tokens"] / m["seconds"], int(m["discarded"]), int(m["searches"]),
                     f"{base_s / m['seconds']:.2f}x"])
    primed = f", responses start with {args.prime!r}" if args.prime else ""
    print(table(f"{args.questions} NQ dev questions, {args.model}, greedy, max {args.max_turns} turns x "
                f"{args.turn_tokens} tokens{primed} (median of {args.repeats})",
                ["loop", "wall s", "generate s", "retrieve s", "kept tokens", "kept tokens/s", "discarded tokens",
                 "searches", "speed-up vs search-r1"], rows))
    print(f"\nidentical trajectories (greedy): {identical}/{len(questions)}; "
          f"same stop reason: {len(same_stop)}/{len(questions)}")
    stops = {name: {r: sum(t.stop_reason == r for t in ts) for r in ("answer", "eos", "max_turns", "length")}
             for name, ts in trajectories.items()}
    print(f"stop reasons: {stops}")
    save_json(args.out, {"prime": args.prime, "runs": runs, "median": med, "identical": identical, "stops": stops,
                         "questions": len(questions), "model": args.model})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
