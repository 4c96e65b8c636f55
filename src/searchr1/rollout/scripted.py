"""A `Generator` that plays given turn texts instead of sampling: a teacher for supervised warm-up.

Run through the real `Agent` with the real retriever, a script produces trajectories with exactly
the token layout, loss masks and retrieved `<information>` that RL rollouts have, so supervised
warm-up trains on the same sequences the policy will later generate. Each turn's text must end
with a stop string, or with the EOS token's text (the message ends as the policy ends it: the
tool-call protocol's final answer), or the script ends and the row emits EOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from searchr1.rollout.generator import GeneratorBase, Sample, SamplingParams, TurnBatchedSession, find_stop


class ScriptedGenerator(GeneratorBase):
    def __init__(self, tokenizer, scripts: Sequence[Sequence[str]]) -> None:
        """scripts[i] = the turn texts of episode i, in order."""
        self.tokenizer = tokenizer
        self.scripts = [list(s) for s in scripts]
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos = [] if eos is None else [int(eos)]

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "ScriptedSession":
        if len(prompts) != len(self.scripts):
            raise ValueError(f"{len(prompts)} prompts but {len(self.scripts)} scripts")
        return ScriptedSession(self)


class ScriptedSession(TurnBatchedSession):
    def __init__(self, gen: ScriptedGenerator) -> None:
        super().__init__()
        self.gen = gen
        self.turn = [0] * len(gen.scripts)

    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        out = {}
        for row in appended:
            script = self.gen.scripts[row]
            if self.turn[row] < len(script):
                text = script[self.turn[row]]
                ids = list(self.gen.tokenizer(text, add_special_tokens=False)["input_ids"])
                hit = find_stop(text, stop)
                ended = not hit and bool(ids) and ids[-1:] == self.gen.eos
                sample = Sample(ids, [0.0] * len(ids), "stop" if hit else "eos" if ended else "length", hit)
            else:
                sample = Sample(list(self.gen.eos), [0.0] * len(self.gen.eos), "eos")
            limit = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row]
            if len(sample.token_ids) > limit:
                sample = Sample(sample.token_ids[:limit], sample.logprobs[:limit], "length")
            self.turn[row] += 1
            out[row] = sample
        return out

    def finish(self, rows: Iterable[int]) -> None:
        pass

    def close(self) -> None:
        pass
