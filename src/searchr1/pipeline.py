"""The steps from a base model to a scored policy, shared by `searchr1 demo` and `searchr1 study`:

    world     the synthetic world on disk (`searchr1.data.world.prepare_world`), its indexes
              (`index_world`) and a retriever over them (`retriever_config`)
    warm-up   optional supervised warm-up of a policy in memory, saved as a model directory (`warm_up`)
    train     RL as `cfg.train` says, from `cfg.model.name` (`train_policy`)
    evaluate  a policy in memory, or `cfg.model`, on given questions (`evaluate_policy`)

Every evaluation generates with the engine `rollout.backend` names (`searchr1.rollout.backend`),
the one training samples with. The callers arrange the steps: the demo as stages with a
before/after report, the study as arms x seeds that resume.

A policy here is a (transformers causal LM, tokenizer) pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from searchr1.rollout.backend import open_generator


def index_world(cfg, corpus: Path, index_dir: Path, methods: Sequence[str], progress: bool = False) -> dict:
    """Build the indexes `methods` of `corpus` under `index_dir` with `cfg.index`'s settings (an index
    of the same corpus is reused); the index's metadata (index.json)."""
    from searchr1.retrieval.build import build_index

    return build_index(dataclasses.replace(cfg.index, corpus=str(corpus), dir=str(index_dir), methods=list(methods)),
                       progress=progress)


def retriever_config(cfg, index_dir: Path, method: str | None = None):
    """`cfg.retriever` searching the local index `index_dir` in process (no server), with `method`
    (default: `cfg.retriever.method`)."""
    return dataclasses.replace(cfg.retriever, index=str(index_dir), url="", method=method or cfg.retriever.method)


def load_policy(cfg) -> tuple:
    """`cfg.model` loaded as a trainable policy: (model, tokenizer)."""
    from searchr1.modelhub import load_causal_lm

    return load_causal_lm(cfg.model.name, cfg.model.device, cfg.model.dtype)


def warm_up(cfg, policy: tuple, retriever, questions: Sequence, out_dir: Path, console=None) -> dict:
    """Supervised warm-up (`sft.*`) of `policy`, trained in place on demonstrations for the synthetic
    `questions`, then saved to `out_dir`; the warm-up's metrics (`searchr1.train.sft.warmup`)."""
    from searchr1.train.sft import save_model, warmup

    model, tokenizer = policy
    result = warmup(cfg, model, tokenizer, retriever, questions, console)
    save_model(model, tokenizer, out_dir)
    return result


def train_policy(cfg, retriever=None, console=None) -> tuple[dict, tuple]:
    """RL as `cfg.train` says, from `cfg.model.name`: (the trainer's result, the trained policy in
    eval mode)."""
    from searchr1.train.models import causal_lm
    from searchr1.train.trainer import train

    result = train(cfg, console, retriever=retriever)
    return result, (causal_lm(result["models"].policy).eval(), result["tokenizer"])


def evaluate_policy(cfg, console=None, retriever=None, questions: Mapping[str, Sequence[dict]] | None = None,
                    policy: tuple | None = None) -> dict:
    """`cfg.eval` on `questions` (`searchr1.eval.harness.evaluate`), played by `policy` or, without
    one, by `cfg.model`, on the engine `cfg.rollout.backend` names. vLLM starts from the directory
    `cfg.model.name` and then loads the policy's current weights."""
    from searchr1.eval.harness import evaluate

    generator = open_generator(cfg) if policy is None else open_generator(cfg, *policy)
    try:
        return evaluate(cfg, console, generator, retriever, questions=questions)
    finally:
        generator.close()
