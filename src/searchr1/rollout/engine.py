"""The always-available `Generator`: continuous batching on a Hugging Face causal LM.

Why not `model.generate`: a multi-turn rollout stops each row at its own `</search>`, appends
different injected tokens to different rows, and wants the next episode to start as soon as one
ends; `generate` continues a fixed batch whose rows grow alike.

This engine works a token at a time over a pool of rows, each in its own slot of one KV cache
(`searchr1.rollout.kv`). `submit(row, tokens, budget, stop)` appends tokens to a row and starts its
next turn; `step()` advances every generating row by one token and returns the turns that ended:

  * rows with more than one token waiting (a new prompt, an `<information>` block) are prefilled
    first, one row per forward pass: the pass costs its own tokens only, never padding; a new
    row first copies the longest prefix another live row holds (the shared prompt template, or
    the whole prompt for the rest of a GRPO group) instead of computing it;
  * then one batched forward pass decodes a token for every generating row; each row attends to
    its own slot only (a 2D mask), at its own position ids.

So a row that stops never waits for the others: the agent gives it its documents (or the next
question) and it rejoins the decode batch at the next step. Turns end at a stop string (checked on
the decoded tail after every token), at EOS, at the row's token budget, or at the model's context.
A turn costs only the new tokens (`reuse_cache=False` re-encodes the whole context at every
submit instead, like Search-R1's loop, as a baseline).

Sampling is seeded per row (`row_seed`), so what a row draws does not depend on which rows share
its batch: the same seed gives the same trajectories with any pool size.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Sequence

import torch

from searchr1.rollout.generator import Sample, SamplingParams, SingleTurn, SteppedSession, find_stop
from searchr1.rollout.kv import SlotCache, check_model
from searchr1.rollout.sampling import sample_next

# Stop strings are a few characters; the last 16 tokens always cover one that the latest token
# completed (a token decodes to at least one character, or to nothing for a partial UTF-8 byte).
_TAIL_TOKENS = 16
# Shorter common prefixes are computed, not copied: not worth a look-up.
_MIN_SHARED = 8


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the generation config's (chat models
    often end a turn with a token such as <|im_end|> that only the latter lists)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class EngineGenerator(SingleTurn):
    """`Generator` over a transformers causal LM (any device, any dtype the model runs in)."""

    def __init__(self, model, tokenizer, *, reuse_cache: bool = True, share_prefix: bool = True,
                 max_context: int | None = None, compile_decode: str = "") -> None:
        """`compile_decode`: a `torch.compile` backend ("inductor") for the decode passes (one token
        per row), "" = eager. A pass of a few rows is dominated by per-layer overheads, which a
        compiled graph cuts; shapes are dynamic, so it compiles about twice per autocast state (one
        row, several rows), lazily, at the first such pass. Prefill passes stay eager."""
        self.model = model
        self.tokenizer = tokenizer
        self.reuse_cache = reuse_cache
        self.share_prefix = share_prefix
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 1 << 30))
        check_model(model)
        # transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.decode_model = torch.compile(model, backend=compile_decode, dynamic=True) if compile_decode else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", dtype: str = "auto", **kwargs) -> "EngineGenerator":
        from searchr1.modelhub import load_causal_lm

        model, tokenizer = load_causal_lm(name, device=device, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "EngineGenerator":
        """From a `searchr1.rollout.settings.ModelConfig` (sets torch's CPU threads if asked)."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return cls.from_pretrained(cfg.name, cfg.device, cfg.dtype, **kwargs)

    def extend(self, sample: Sample, token: int, logprob: float, stop: Sequence[str], budget: int) -> bool:
        """Append one sampled token to `sample`; True, with `sample.finish` set, when it ends the turn:
        EOS, a stop string completed (looked for in the decoded tail), or the token budget spent."""
        sample.token_ids.append(token)
        sample.logprobs.append(logprob)
        if token in self.eos_ids:
            sample.finish = "eos"
        elif stop and (hit := find_stop(self.tokenizer.decode(sample.token_ids[-_TAIL_TOKENS:]), stop)):
            sample.finish, sample.stop = "stop", hit
        elif len(sample.token_ids) >= budget:
            sample.finish = "length"
        else:
            return False
        return True

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "EngineSession":
        """Rows 0..len(prompts)-1; a row takes a slot in the cache when its first turn is submitted."""
        return EngineSession(self, prompts, params)


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row`'s sampling noise in a session seeded with `seed` (distinct per row)."""
    return (seed * 0x9E3779B97F4A7C15 + row * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)


class _Turn:
    """A row's turn in progress: what it sampled so far and when it stops."""

    def __init__(self, budget: int, stop: tuple[str, ...]) -> None:
        self.sample = Sample()
        self.budget = budget
        self.stop = stop


class EngineSession(SteppedSession):
    """The rows of one rollout, numbered by prompt index, and the slots of those that are live.

    A row is live from its first `submit` until `finish`; a live row holds a slot of the KV cache
    (slots [0, live) in order of `self.live`). `contexts[row]` is every token of the row so far.
    """

    def __init__(self, gen: EngineGenerator, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.gen = gen
        self.params = params
        self.device = gen.device
        self.contexts = [list(map(int, p)) for p in prompts]
        self.cache = SlotCache()
        self.live: list[int] = []  # slot -> row
        self.cached: list[int] = []  # slot -> tokens of that row in the cache
        self.pending: dict[int, list[int]] = {}  # row -> tokens not yet in the cache
        self.turns: dict[int, _Turn] = {}  # rows generating
        self.done: dict[int, Sample] = {}  # turns that ended, not yet returned by step()
        self.closed: set[int] = set()
        self.rngs: dict[int, torch.Generator] = {}
        self.forward_tokens = 0  # tokens fed through the model (incl. idle rows): the cost of the session
        # rows in the pass -> [passes, seconds incl. sampling, keys read per row (summed over passes)]
        self.decode_passes: dict[int, list[float]] = {}
        self.prefill_tokens = 0
        self.prefill_seconds = 0.0
        self.shared_tokens = 0  # prompt tokens copied from another row's cache instead of computed

    @property
    def rows(self) -> list[int]:
        return list(self.live)

    # ------------------------------------------------------------------------- public

    def submit(self, row: int, tokens: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ()) -> None:
        """Append `tokens` to row `row`'s context and start its next turn (ended by `step`)."""
        if not 0 <= row < len(self.contexts) or row in self.closed:
            raise ValueError(f"row {row} is not live in this session (finished or unknown)")
        if row in self.turns:
            raise ValueError(f"row {row} is already generating")
        if row not in self.pending:  # its first turn: the prompt goes in first
            self.pending[row] = list(self.contexts[row])
            self.live.append(row)
            self.cached.append(0)
        ids = list(map(int, tokens))
        self.contexts[row].extend(ids)
        self.pending[row].extend(ids)
        if not self.gen.reuse_cache:  # the baseline: forget the row's cache, re-encode its context
            self.pending[row] = list(self.contexts[row])
            self.cached[self.live.index(row)] = 0
        turn = _Turn(min(int(max_new_tokens), self.gen.max_context - len(self.contexts[row])), tuple(stop))
        if turn.budget <= 0:
            self.done[row] = turn.sample  # "length" at once
        else:
            self.turns[row] = turn

    def step(self) -> dict[int, Sample]:
        """Advance every generating row by a token (rows with tokens waiting are prefilled first);
        returns the turns that ended, by row."""
        t0 = time.perf_counter()
        for row in [r for r in self.turns if len(self.pending[r]) > 1]:
            self._emit([row], self._prefill(row))
        t1 = time.perf_counter()
        self.prefill_seconds += t1 - t0
        decoding = [r for r in self.turns if len(self.pending[r]) == 1]
        if decoding:
            logits, width = self._decode(decoding)
            self._emit(decoding, logits)  # its .tolist() waits for the device, so the time is the pass's
            record = self.decode_passes.setdefault(width, [0, 0.0, 0])
            record[0] += 1
            record[1] += time.perf_counter() - t1
            record[2] += self.cache.plan.kv_len
        out, self.done = self.done, {}
        return out

    def finish(self, rows: Iterable[int]) -> None:
        """Release rows: the last live row moves into each freed slot, so live rows stay in [0, live)."""
        for row in rows:
            self.closed.add(row)
            self.turns.pop(row, None)
            self.rngs.pop(row, None)
            if row not in self.live:
                continue
            slot, last = self.live.index(row), len(self.live) - 1
            if slot != last:
                self.cache.move(last, slot, self.cached[last])
                self.live[slot], self.cached[slot] = self.live[last], self.cached[last]
            self.live.pop()
            self.cached.pop()
            self.pending.pop(row, None)

    def close(self) -> None:
        self.finish(list(self.live))
        self.cache = SlotCache()

    # ------------------------------------------------------------------------- sampling

    def _rng(self, row: int) -> torch.Generator | None:
        if self.params.seed is None or self.params.greedy:
            return None
        if row not in self.rngs:
            self.rngs[row] = torch.Generator(device=self.device).manual_seed(row_seed(self.params.seed, row))
        return self.rngs[row]

    def _emit(self, rows: list[int], logits: torch.Tensor) -> None:
        """Sample a token for each of `rows` (logits: float[len(rows), V]) and end the turns that stop."""
        rngs = [self._rng(r) for r in rows]
        tokens, logprobs = sample_next(logits, self.params, None if rngs[0] is None else rngs)
        for row, tok, lp in zip(rows, tokens.tolist(), logprobs.tolist()):
            turn = self.turns[row]
            self.contexts[row].append(tok)
            self.pending[row] = [tok]
            if self.gen.extend(turn.sample, tok, lp, turn.stop, turn.budget):
                self.done[row] = self.turns.pop(row).sample

    # ------------------------------------------------------------------------- the forward passes

    def _share_prefix(self, row: int, slot: int) -> None:
        """A row that has nothing in the cache yet copies the longest prefix of its tokens that another
        live row already holds (the prompt template every question shares; the whole prompt for
        the other rollouts of a GRPO group) instead of computing it: a copy, not a forward pass.
        At least one token is left to feed, for the logits of the row's next token."""
        want = self.pending[row]
        best, donor = 0, None
        for s, other in enumerate(self.live):
            if s == slot or self.cached[s] <= best:
                continue
            held, n, limit = self.contexts[other], 0, min(self.cached[s], len(want) - 1)
            while n < limit and held[n] == want[n]:
                n += 1
            if n > best:
                best, donor = n, s
        if donor is not None and best >= _MIN_SHARED:
            self.cache.reserve(len(self.live), best)
            self.cache.move(donor, slot, best)
            self.cached[slot] = best
            self.pending[row] = want[best:]
            self.shared_tokens += best

    @torch.no_grad()
    def _prefill(self, row: int) -> torch.Tensor:
        """Feed one row all its pending tokens; the logits of its last position: float[1, V]."""
        slot = self.live.index(row)
        if self.cached[slot] == 0 and self.gen.share_prefix and self.gen.reuse_cache:
            self._share_prefix(row, slot)
        ids, start = self.pending[row], self.cached[slot]
        self.cache.plan_prefill(slot, start, len(ids))
        self.prefill_tokens += len(ids)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        logits = self._forward(torch.tensor([ids], device=self.device), positions,
                               torch.ones(1, start + len(ids), dtype=torch.long, device=self.device))
        self.cached[slot] += len(ids)
        self.pending[row] = []
        return logits

    @torch.no_grad()
    def _decode(self, rows: list[int]) -> tuple[torch.Tensor, int]:
        """One token for each of `rows` in one pass over live slots [0, B): (float[len(rows), V], B).

        Live rows that are not generating (waiting for their next turn) and sit among the first B
        slots ride along on a pad token written past their end and not counted, so the next real
        token overwrites it. Once they are at least half of the live rows, the generating rows are
        swapped to the front first, so the waiting ones stop costing a row of every pass."""
        if len(rows) <= len(self.live) // 2:
            self._to_front(rows)
        slot_of = {r: s for s, r in enumerate(self.live)}
        width = max(slot_of[r] for r in rows) + 1
        go = set(rows)
        ids = [self.pending[r][0] if r in go else self.gen.pad_id for r in self.live[:width]]
        positions = torch.tensor(self.cached[:width], dtype=torch.long, device=self.device)
        self.cache.plan_decode(positions)
        attn = (torch.arange(int(positions.max()) + 1, device=self.device)[None] <= positions[:, None]).long()
        logits = self._forward(torch.tensor(ids, device=self.device)[:, None], positions[:, None], attn,
                               self.gen.decode_model)
        for r in rows:
            self.cached[slot_of[r]] += 1
            self.pending[r] = []
        return logits[[slot_of[r] for r in rows]], width

    def _to_front(self, rows: list[int]) -> None:
        """Swap slots so that `rows` occupy slots [0, len(rows))."""
        front = set(rows)
        behind = [s for s in range(len(rows), len(self.live)) if self.live[s] in front]
        idle = [s for s in range(len(rows)) if self.live[s] not in front]
        for a, b in zip(idle, behind):
            self.cache.swap(a, b, max(self.cached[a], self.cached[b]))
            self.live[a], self.live[b] = self.live[b], self.live[a]
            self.cached[a], self.cached[b] = self.cached[b], self.cached[a]

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attn: torch.Tensor, model=None) -> torch.Tensor:
        model = self.gen.model if model is None else model
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{self.gen._cache_kwarg: self.cache})
        self.forward_tokens += ids.numel()
        return out.logits[:, -1, :].float()
