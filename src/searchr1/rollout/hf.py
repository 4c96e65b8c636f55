"""The always-available `Generator`: batched sampling on a Hugging Face causal LM.

Why not `model.generate`: a multi-turn rollout appends different numbers of injected tokens to
different rows between turns, and `generate` can only continue a batch whose rows grew alike.
This backend keeps one KV cache for the batch and lets rows grow unevenly: each forward pass
feeds every row its pending tokens, left-padded to a common length, and the attention mask
(with holes where the padding sits) plus explicit position ids keep each row's view exactly that
of its own unpadded sequence. So a turn costs the new tokens only, never a re-encoding of the
context (`reuse_cache=False` re-encodes it every turn, like Search-R1's loop, as a baseline).

Generation stops per row at a stop string (checked on the decoded tail after every token), at
EOS, or at the row's token budget; rows that stopped wait while the others finish the turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence

import torch

from searchr1.rollout.generator import Sample, SamplingParams, find_stop
from searchr1.rollout.sampling import sample_next

# Stop strings are a few characters; the last 16 tokens always cover one that the latest token
# completed (a token decodes to at least one character, or to nothing for a partial UTF-8 byte).
_TAIL_TOKENS = 16


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


class HFGenerator:
    """`Generator` over a transformers causal LM (any device, any dtype the model runs in)."""

    def __init__(self, model, tokenizer, *, reuse_cache: bool = True, max_context: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.reuse_cache = reuse_cache
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 1 << 30))
        # transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", dtype: str = "auto", **kwargs) -> "HFGenerator":
        from searchr1.modelhub import load_causal_lm

        model, tokenizer = load_causal_lm(name, device=device, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "HFGenerator":
        """From a `searchr1.rollout.settings.ModelConfig` (sets torch's CPU threads if asked)."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return cls.from_pretrained(cfg.name, cfg.device, cfg.dtype, **kwargs)

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "HFSession":
        return HFSession(self, prompts, params)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = (),
                 params: SamplingParams = SamplingParams()) -> list[Sample]:
        """One turn for a batch of prompts (single-turn use: evaluation baselines, tests)."""
        session = self.session(prompts, params)
        try:
            out = session.generate({i: [] for i in range(len(prompts))}, max_new_tokens, stop)
        finally:
            session.close()
        return [out[i] for i in range(len(prompts))]


class HFSession:
    """The state of one batch of rows across turns. Rows are numbered by their prompt index."""

    def __init__(self, gen: HFGenerator, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.gen = gen
        self.params = params
        self.device = gen.device
        self.rows = list(range(len(prompts)))  # batch position -> row id
        self.contexts = [list(map(int, p)) for p in prompts]  # by row id: every token so far
        self.pending = [list(c) for c in self.contexts]  # by batch position: tokens not in the cache yet
        self._reset_cache()
        self.rng = None
        if params.seed is not None:
            self.rng = torch.Generator(device=self.device).manual_seed(params.seed)
        self.forward_tokens = 0  # tokens fed through the model (incl. padding): the cost of the session

    def _reset_cache(self) -> None:
        self.cache = None
        self.attn = torch.zeros(len(self.rows), 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------------- public

    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        where = {row: b for b, row in enumerate(self.rows)}
        for row, ids in appended.items():
            if row not in where:
                raise ValueError(f"row {row} is not live in this session (finished or unknown)")
            self.pending[where[row]].extend(map(int, ids))
            self.contexts[row].extend(map(int, ids))
        if not self.gen.reuse_cache:  # the baseline: forget the cache, re-encode every context
            self._reset_cache()
            self.pending = [list(self.contexts[row]) for row in self.rows]

        samples = {row: Sample() for row in appended}
        budget = {}
        for row in appended:
            want = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row]
            budget[row] = min(int(want), self.gen.max_context - len(self.contexts[row]))
        active = [where[row] for row in appended if budget[row] > 0]  # others: finish "length" at once

        while active:
            logits = self._forward({b: self.pending[b] for b in active})
            tokens, logprobs = sample_next(logits[active], self.params, self.rng)
            still = []
            for b, tok, lp in zip(active, tokens.tolist(), logprobs.tolist()):
                row = self.rows[b]
                s = samples[row]
                s.token_ids.append(tok)
                s.logprobs.append(lp)
                self.contexts[row].append(tok)
                self.pending[b] = [tok]
                if tok in self.gen.eos_ids:
                    s.finish = "eos"
                elif stop and (hit := find_stop(self.gen.tokenizer.decode(s.token_ids[-_TAIL_TOKENS:]), stop)):
                    s.finish, s.stop = "stop", hit
                elif len(s.token_ids) >= budget[row]:
                    s.finish = "length"
                else:
                    still.append(b)
            active = still
        return samples

    def finish(self, rows: Iterable[int]) -> None:
        done = set(rows)
        keep = [b for b, row in enumerate(self.rows) if row not in done]
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        if self.cache is not None:
            self.cache.batch_select_indices(index)
        self.attn, self.pos = self.attn[index], self.pos[index]
        self.rows = [self.rows[b] for b in keep]
        self.pending = [self.pending[b] for b in keep]

    def close(self) -> None:
        self.cache = None
        self.rows, self.pending = [], []

    # ------------------------------------------------------------------------- the forward pass

    @torch.no_grad()
    def _forward(self, segments: Mapping[int, Sequence[int]]) -> torch.Tensor:
        """Feed `segments[b]` to batch position b (others get nothing); logits of each row's last
        position: float[B, V]. Rows without a segment see only padding, masked out."""
        batch = len(self.rows)
        width = max(len(s) for s in segments.values())
        ids = torch.full((batch, width), self.gen.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for b, seg in segments.items():
            if seg:
                ids[b, width - len(seg):] = torch.tensor(seg, dtype=torch.long)
                mask[b, width - len(seg):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = self.pos[:, None] + (mask.cumsum(dim=1) - 1).clamp(min=0)
        attn = torch.cat([self.attn, mask], dim=1)
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache()
        # The DynamicCache grows in place, so the returned cache object is not needed.
        out = self.gen.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self.gen._cache_kwarg: self.cache})
        self.attn = attn
        self.pos = self.pos + mask.sum(dim=1)
        self.forward_tokens += batch * width
        for b in segments:
            self.pending[b] = []
        return out.logits[:, -1, :].float()
