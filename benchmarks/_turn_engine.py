"""The rollout engine as it was before continuous batching (commit 90b7382), kept as a baseline.

It batches by turns: a `generate` call runs one turn for a fixed set of rows, left-padded into one
DynamicCache (whose every update concatenates the whole cache), and returns when the slowest row
of the turn stops; a row that stopped early waits (split off once half the batch has stopped).
`benchmarks/rollout.py` measures the continuous engine against it, and
`tests/integration/test_continuous_batching.py` checks that both produce the same greedy
trajectories. It drives the same model through an `EngineGenerator` (its settings: EOS ids, pad id,
context limit, cache keyword) and exposes the step API through `TurnBatchedSession`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from searchr1.rollout.generator import Sample, SamplingParams, TurnBatchedSession
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.sampling import sample_next


class TurnEngine:
    """`Generator` over the model of `gen`, with the old turn-batched session."""

    def __init__(self, gen: EngineGenerator) -> None:
        self.gen = gen
        self.tokenizer = gen.tokenizer

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "TurnSession":
        return TurnSession(self.gen, prompts, params)


class _Rows:
    """The model-side state of a set of rows: KV cache, attention mask over its columns (with holes
    where padding sits), next position id, and tokens not yet in the cache. Rows can be split off
    and merged back, so a forward pass only carries the rows that are generating."""

    def __init__(self, rows: list[int], pending: list[list[int]], device, cache=None, attn=None, pos=None) -> None:
        self.rows = rows  # position in this set -> row id
        self.pending = pending
        self.cache = cache  # DynamicCache or None before the first forward pass
        self.attn = attn if attn is not None else torch.zeros(len(rows), 0, dtype=torch.long, device=device)
        self.pos = pos if pos is not None else torch.zeros(len(rows), dtype=torch.long, device=device)

    def select(self, idx: list[int]) -> "_Rows":
        index = torch.tensor(idx, dtype=torch.long, device=self.attn.device)
        cache = None
        if self.cache is not None:
            from transformers import DynamicCache

            cache = DynamicCache([(k[index], v[index]) for k, v, *_ in self.cache])
        return _Rows([self.rows[i] for i in idx], [self.pending[i] for i in idx], self.attn.device, cache,
                     self.attn[index], self.pos[index])

    @staticmethod
    def merge(parts: list["_Rows"]) -> "_Rows":
        """One set holding all rows of `parts`; shorter histories are right-padded with masked columns
        (positions are explicit, so a masked gap inside a history changes nothing)."""
        parts = [p for p in parts if p.rows]
        if len(parts) == 1:
            return parts[0]
        width = max(p.attn.shape[1] for p in parts)
        pad = lambda x, dim: torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, width - x.shape[dim]))
        cache = None
        if any(p.cache is not None for p in parts):
            from transformers import DynamicCache

            ref = list(next(p.cache for p in parts if p.cache is not None))
            # rows that never went through the model yet have an empty history
            empty = lambda n, x: x.new_zeros((n, x.shape[1], 0, x.shape[3]))
            layers = [list(p.cache) if p.cache is not None else [(empty(len(p.rows), k), empty(len(p.rows), v))
                                                                  for k, v, *_ in ref] for p in parts]
            cache = DynamicCache([(torch.cat([pad(l[i][0], 2) for l in layers]), torch.cat([pad(l[i][1], 2) for l in layers]))
                                  for i in range(len(layers[0]))])
        return _Rows([r for p in parts for r in p.rows], [x for p in parts for x in p.pending], parts[0].attn.device,
                     cache, torch.cat([pad(p.attn, 1) for p in parts]), torch.cat([p.pos for p in parts]))


class TurnSession(TurnBatchedSession):
    """The state of one batch of rows across turns. Rows are numbered by their prompt index.

    Within a turn, rows that stopped are split off the batch once they are at least half of it,
    so long generations in a few rows do not drag finished rows through every forward pass.
    """

    def __init__(self, gen: EngineGenerator, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        super().__init__()
        self.gen = gen
        self.params = params
        self.device = gen.device
        self.contexts = [list(map(int, p)) for p in prompts]  # by row id: every token so far
        self.state = _Rows(list(range(len(prompts))), [list(c) for c in self.contexts], self.device)
        self.rng = None
        if params.seed is not None:
            self.rng = torch.Generator(device=self.device).manual_seed(params.seed)
        self.forward_tokens = 0  # tokens fed through the model (incl. padding): the cost of the session

    @property
    def rows(self) -> list[int]:
        return self.state.rows

    # ------------------------------------------------------------------------- public

    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        state = self.state
        where = {row: b for b, row in enumerate(state.rows)}
        for row, ids in appended.items():
            if row not in where:
                raise ValueError(f"row {row} is not live in this session (finished or unknown)")
            state.pending[where[row]].extend(map(int, ids))
            self.contexts[row].extend(map(int, ids))
        if not self.gen.reuse_cache:  # the baseline: forget the cache, re-encode every context
            state = _Rows(state.rows, [list(self.contexts[row]) for row in state.rows], self.device)

        samples = {row: Sample() for row in appended}
        budget = {}
        for row in appended:
            want = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row]
            budget[row] = min(int(want), self.gen.max_context - len(self.contexts[row]))
        go = [b for b, row in enumerate(state.rows) if budget.get(row, 0) > 0]  # others: "length" at once
        done = [state.select([b for b in range(len(state.rows)) if b not in set(go)])] if len(go) < len(state.rows) else []
        work = state.select(go) if done else state
        active = list(range(len(work.rows)))

        while active:
            logits = self._forward(work, active)
            tokens, logprobs = sample_next(logits[active], self.params, self.rng)
            still = []
            for b, tok, lp in zip(active, tokens.tolist(), logprobs.tolist()):
                row = work.rows[b]
                self.contexts[row].append(tok)
                work.pending[b] = [tok]
                if not self.gen.extend(samples[row], tok, lp, stop, budget[row]):
                    still.append(b)
            active = still
            if active and len(active) <= len(work.rows) // 2:
                keep = set(active)
                done.append(work.select([b for b in range(len(work.rows)) if b not in keep]))
                work = work.select(active)
                active = list(range(len(work.rows)))
        self.state = _Rows.merge(done + [work])
        return samples

    def finish(self, rows: Iterable[int]) -> None:
        finished = set(rows)
        keep = [b for b, row in enumerate(self.state.rows) if row not in finished]
        if len(keep) < len(self.state.rows):
            self.state = self.state.select(keep)

    def close(self) -> None:
        self.state = _Rows([], [], self.device)

    # ------------------------------------------------------------------------- the forward pass

    @torch.no_grad()
    def _forward(self, rows: _Rows, active: Sequence[int]) -> torch.Tensor:
        """Feed each active row its pending tokens (others get nothing); logits of each row's last
        position: float[B, V]. Rows without tokens see only padding, masked out."""
        batch = len(rows.rows)
        width = max(len(rows.pending[b]) for b in active)
        ids = torch.full((batch, width), self.gen.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for b in active:
            seg = rows.pending[b]
            if seg:
                ids[b, width - len(seg):] = torch.tensor(seg, dtype=torch.long)
                mask[b, width - len(seg):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = rows.pos[:, None] + (mask.cumsum(dim=1) - 1).clamp(min=0)
        attn = torch.cat([rows.attn, mask], dim=1)
        if rows.cache is None:
            from transformers import DynamicCache

            rows.cache = DynamicCache()
        # The DynamicCache grows in place, so the returned cache object is not needed.
        out = self.gen.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self.gen._cache_kwarg: rows.cache})
        rows.attn = attn
        rows.pos = rows.pos + mask.sum(dim=1)
        self.forward_tokens += batch * width
        for b in active:
            rows.pending[b] = []
        return out.logits[:, -1, :].float()
