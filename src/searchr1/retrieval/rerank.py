"""Optional second stage: a cross-encoder reads (query, passage) pairs and reorders candidates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from searchr1.errors import IndexFormatError
from searchr1.modelhub import pick_device, resolve_model
from searchr1.retrieval.base import Hit


class CrossEncoderReranker:
    def __init__(self, model: str, device: str = "auto", batch_size: int = 32, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = pick_device(device)
        path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        except OSError as e:
            raise IndexFormatError(f"cannot load reranker {model!r}: {e}") from None
        self.batch_size = batch_size
        self.max_length = max_length
        self._torch = torch

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Relevance of each (query, passage) pair, higher is better. -> float32[len(pairs)]."""
        torch = self._torch
        out = np.empty(len(pairs), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start : start + self.batch_size]
                batch = self.tokenizer(
                    [q for q, _ in chunk], [p for _, p in chunk], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits.float()
                # One logit: a relevance score (MS MARCO / bge rerankers). Several: log-probability
                # of the last class, the "relevant" label by convention.
                score = logits[:, 0] if logits.shape[1] == 1 else logits.log_softmax(-1)[:, -1]
                out[start : start + len(chunk)] = score.cpu().numpy()
        return out

    def rerank(self, queries: Sequence[str], candidates: Sequence[Sequence[Hit]], k: int) -> list[list[Hit]]:
        pairs = [(q, h.contents) for q, hits in zip(queries, candidates) for h in hits]
        scores = self.score_pairs(pairs) if pairs else np.empty(0, dtype=np.float32)
        out, pos = [], 0
        for hits in candidates:
            s = scores[pos : pos + len(hits)]
            pos += len(hits)
            order = sorted(range(len(hits)), key=lambda i: (-s[i], i))[:k]
            out.append([Hit(hits[i].doc_id, hits[i].title, hits[i].text, float(s[i]), hits[i].raw_contents) for i in order])
        return out
