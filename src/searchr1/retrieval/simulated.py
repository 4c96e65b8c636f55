"""Simulated search (ZeroSearch, arXiv 2505.04588): a model writes the documents for a query.

For each query a draw decides whether its documents are *useful* (they give facts that answer it)
or *noisy* (they look related but do not help), with the probability of noisy documents rising over
training by ZeroSearch's curriculum (section 3 of the paper):

    p_i = p_s + (b^(i/m) - 1) / (b - 1) * (p_e - p_s)

where i is the training step, m the number of steps, p_s and p_e the start and end probabilities and
b > 1 the base (the paper's default is 4). The trainer reports the step through `set_step`.

The prompts below are ours, written from the paper's description (ZeroSearch fine-tunes its
simulator on real search trajectories and also shows it the question and its answer; through the
`Retriever` interface we see only the query, so an off-the-shelf instruct model is prompted with it).
One generation writes all k documents of a query, as ZeroSearch does. Each kind is cached on its own
(namespace `simulated:<kind>:<model>`), so the curriculum's draw stays live while the documents for
a (kind, query, k) are written once and replay identically.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Callable, Sequence

from searchr1.retrieval.base import Hit, Retriever, search_queries
from searchr1.retrieval.cache import CachedRetriever, QueryCache, normalize_query
from searchr1.retrieval.settings import SimulatedConfig

PROMPT_VERSION = "v1"  # part of the cache namespace: change it when a prompt changes

_FORMAT = ("Write each result as three lines:\n"
           "Document <number>\n"
           "Title: <title of the page>\n"
           "Text: <the passage>\n\n")

PROMPTS = {
    "useful": ("You are a web search engine. Write {k} search results for the query below. Each result is a "
               "passage of about 60 words from a different web page, and each gives correct facts that help "
               "answer the query.\n" + _FORMAT + "Query: {query}\n"),
    "noisy": ("You are a web search engine. Write {k} search results for the query below. Each result is a "
              "passage of about 60 words from a different web page that looks related to the query (it shares "
              "its words or its topic) but does not help answer it: it is about another subject, another person "
              "or place with a similar name, or it states wrong facts.\n" + _FORMAT + "Query: {query}\n"),
}

_DOC = re.compile(r"^\s*\**\s*Document\s*\d+\s*\**\s*[:.)-]?\s*", re.IGNORECASE | re.MULTILINE)
_TITLE = re.compile(r"^\s*Title\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_TEXT = re.compile(r"^\s*Text\s*:\s*", re.IGNORECASE | re.MULTILINE)


def noise_probability(step: int, total_steps: int, start: float, end: float, base: float) -> float:
    """ZeroSearch's curriculum: p_s + (b^(i/m) - 1)/(b - 1) * (p_e - p_s); `start` when m is unknown (0)."""
    if total_steps <= 0:
        return start
    frac = min(max(step / total_steps, 0.0), 1.0)
    return start + (base ** frac - 1.0) / (base - 1.0) * (end - start)


def parse_documents(text: str, k: int) -> list[tuple[str, str]]:
    """(title, text) of up to k documents written in the prompt's format. Output without the
    `Document N` markers counts as one untitled document, so a model that ignores the format still
    returns what it wrote."""
    parts = _DOC.split(text)[1:] if _DOC.search(text) else [text]  # [1:]: what precedes "Document 1"
    docs = []
    for part in parts:
        title_m = _TITLE.search(part)
        title = title_m.group(1).strip() if title_m else ""
        text_m = _TEXT.search(part)
        body = part[text_m.end():] if text_m else (part[title_m.end():] if title_m else part)
        body = " ".join(body.split())
        if body or title:
            docs.append((title, body))
            if len(docs) == k:
                break
    return docs


def document_id(kind: str, query: str, rank: int) -> str:
    digest = hashlib.sha1(normalize_query(query).encode()).hexdigest()[:12]
    return f"sim-{kind}-{digest}-{rank}"


class DocumentWriter:
    """A `Retriever` whose passages a generator writes, all of one kind (useful or noisy)."""

    def __init__(self, owner: "SimulatedSearch", kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.method = f"simulated-{kind}"

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        texts = self.owner.write([PROMPTS[self.kind].format(k=k, query=q) for q in queries])
        return [[Hit(document_id(self.kind, q, i), title, body, 1.0 / (i + 1))
                 for i, (title, body) in enumerate(parse_documents(text, k))]
                for q, text in zip(queries, texts)]


class SimulatedSearch:
    """The simulated search engine. `generator_factory` is called on the first cache miss (a replay
    from the cache never loads the model)."""

    def __init__(self, generator_factory: Callable[[], object], cfg: SimulatedConfig, model_id: str,
                 cache: QueryCache | None = None, chat: bool | None = None, own_generator: bool = True) -> None:
        self.cfg = cfg
        self.method = "simulated"
        self.num_docs = None
        self.model_id = model_id
        self.source = f"documents written by {model_id} (prompts {PROMPT_VERSION})"  # named in reports
        self.chat = chat
        self._factory = generator_factory
        self._own_generator = own_generator
        self._generator = None
        self._cache = cache
        self._lock = threading.Lock()
        self._rng = random.Random(cfg.seed)
        self.step = 0
        self.total_steps = cfg.noise_steps
        self._counts = {"simulated_queries": 0, "noisy_queries": 0, "generations": 0}
        self.writers: dict[str, Retriever] = {}
        for kind in PROMPTS:
            writer = DocumentWriter(self, kind)
            self.writers[kind] = (writer if cache is None else
                                  CachedRetriever(writer, cache, f"simulated:{kind}:{model_id}:{PROMPT_VERSION}"))

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        """The training step (the noise curriculum's i); `total_steps` is its m unless the settings fix it."""
        with self._lock:
            self.step = int(step)
            if total_steps is not None and self.cfg.noise_steps == 0:
                self.total_steps = int(total_steps)

    def noise_probability(self) -> float:
        return noise_probability(self.step, self.total_steps, self.cfg.noise_start, self.cfg.noise_end,
                                 self.cfg.noise_base)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        queries = search_queries(queries, k)
        with self._lock:
            p = self.noise_probability()
            kinds = ["noisy" if self._rng.random() < p else "useful" for _ in queries]
            self._counts["simulated_queries"] += len(queries)
            self._counts["noisy_queries"] += kinds.count("noisy")
        results: list[list[Hit]] = [[] for _ in queries]
        for kind, writer in self.writers.items():
            rows = [i for i, kd in enumerate(kinds) if kd == kind]
            if rows:
                for i, hits in zip(rows, writer.search([queries[i] for i in rows], k)):
                    results[i] = hits
        return results

    @property
    def generator(self):
        with self._lock:
            if self._generator is None:
                self._generator = self._factory()
            return self._generator

    def _encode(self, tokenizer, prompt: str) -> list[int]:
        chat = self.chat if self.chat is not None else bool(getattr(tokenizer, "chat_template", None))
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(tokenizer(prompt)["input_ids"])

    def write(self, prompts: Sequence[str]) -> list[str]:
        """The generator's reply to each prompt (one batch, one turn)."""
        from searchr1.rollout.generator import SamplingParams

        generator = self.generator
        tokenizer = generator.tokenizer
        ids = [self._encode(tokenizer, p) for p in prompts]
        session = generator.session(ids, SamplingParams(temperature=self.cfg.temperature, seed=self.cfg.seed))
        try:
            out = session.generate({i: [] for i in range(len(ids))}, self.cfg.max_new_tokens)
            session.finish(range(len(ids)))
        finally:
            session.close()
        with self._lock:
            self._counts["generations"] += len(prompts)
        return [tokenizer.decode(out[i].token_ids, skip_special_tokens=True) for i in range(len(ids))]

    def metrics(self) -> dict[str, float]:
        with self._lock:
            out = {f"search/{k}": float(v) for k, v in self._counts.items()}
        out["search/noise_p"] = self.noise_probability()
        return {**out, **(self._cache.metrics() if self._cache is not None else {})}

    def close(self) -> None:
        if self._own_generator and self._generator is not None:
            self._generator.close()
        if self._cache is not None:
            self._cache.close()


def open_simulated_search(cfg: SimulatedConfig, cache: QueryCache | None = None, generator=None) -> SimulatedSearch:
    """`retriever.method=simulated`: documents by `generator` if given (its caller keeps it), else by
    our engine on `cfg.model`, loaded on the first query the cache does not hold."""
    if generator is not None:
        name = getattr(getattr(getattr(generator, "model", None), "config", None), "_name_or_path", "") or type(generator).__name__
        return SimulatedSearch(lambda: generator, cfg, name, cache, cfg.model.use_chat_template, own_generator=False)

    def load():
        from searchr1.rollout.engine import EngineGenerator

        return EngineGenerator.from_config(cfg.model)

    return SimulatedSearch(load, cfg, cfg.model.name, cache, cfg.model.use_chat_template)
