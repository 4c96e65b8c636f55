"""Dense retrieval: a sentence encoder (transformers) and a faiss inner-product index.

Index types, by memory for N vectors of dimension d (float32 = 4 bytes):
  flat   exact search, 4*N*d bytes (21M x 768: 60 GiB)
  fp16   exact up to rounding, 2*N*d bytes;  sq8: 8-bit scalar quantiser, N*d bytes
  hnsw   graph search, 4*N*d + ~8*M*N bytes (fast, biggest)
  ivfpq  inverted lists + product quantisation, ~N*(m + 8) bytes (21M x PQ96: ~2 GiB)
Any faiss `index_factory` string is accepted too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from searchr1.errors import IndexFormatError
from searchr1.modelhub import pick_device, resolve_model
from searchr1.retrieval.base import empty_ranking
from searchr1.retrieval.settings import DenseConfig, EncoderConfig

INDEX_FILE = "index.faiss"
ENCODER_FILE = "encoder.json"
META_FILE = "searchr1.json"
EMBEDDINGS_FILE = "embeddings.f16.npy"


# ----------------------------------------------------------------------------- encoder


def mean_pool(hidden, mask):
    """Average of token states over non-padding positions, in fp32 (an fp16 sum over a long passage
    overflows or loses the small components). hidden [B, T, H], mask [B, T] -> float32 [B, H]."""
    m = mask.unsqueeze(-1).float()
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class Encoder:
    """Texts -> float32 unit vectors (when `normalize`), batched and sorted by length."""

    def __init__(self, cfg: EncoderConfig):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_model(cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except OSError as e:
            raise IndexFormatError(f"cannot load encoder {cfg.model!r}: {e}") from None
        if self.device.startswith("cuda") and cfg.fp16:
            model = model.half()
        self.model = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)
        self._torch = torch

    def encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """float32 [len(texts), dim]."""
        torch = self._torch
        prefix = self.cfg.query_prefix if is_query else self.cfg.passage_prefix
        max_len = self.cfg.query_max_length if is_query else self.cfg.max_length
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Encoding similar lengths together wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                rows = order[start : start + bs]
                batch = self.tokenizer(
                    [prefix + texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                if self.cfg.pooling == "mean":
                    emb = mean_pool(hidden, batch["attention_mask"])
                else:
                    emb = hidden[:, 0].float()
                if self.cfg.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out[rows] = emb.cpu().numpy()
        return out


# ----------------------------------------------------------------------------- faiss index


def factory_string(cfg: DenseConfig, dim: int, n: int) -> str:
    """Resolve the `index_type` alias to a faiss index_factory string for n vectors of dim d."""
    kind = cfg.index_type.lower()
    if kind == "flat":
        return "Flat"
    if kind == "fp16":
        return "SQfp16"
    if kind == "sq8":
        return "SQ8"
    if kind == "hnsw":
        return f"HNSW{cfg.hnsw_m},Flat"
    if kind == "ivfpq":
        nlist = cfg.ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        m = cfg.pq_m or dim // 8
        if dim % m:
            raise IndexFormatError(f"dense.pq_m={m} must divide the embedding dimension {dim}")
        # 8-bit codes need >= 256 training points per sub-quantiser; small corpora get 4-bit codes.
        nbits = 8 if min(n, cfg.train_size) >= 256 * 39 else 4
        return f"IVF{nlist},PQ{m}x{nbits}"
    return cfg.index_type  # a raw index_factory string


def new_index(spec: str, dim: int, cfg: DenseConfig):
    import faiss

    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexFormatError(f"faiss cannot build index type {spec!r}: {e}") from None
    hnsw = _find(index, "hnsw")
    if hnsw is not None:
        hnsw.efConstruction = cfg.hnsw_ef_construction
    return index


def _find(index, attr: str):
    """The attribute `attr` of `index` or of the index it wraps (e.g. IndexHNSWFlat.hnsw)."""
    import faiss

    index = faiss.downcast_index(index)
    if hasattr(index, attr):
        return getattr(index, attr)
    return None


def _batched_texts(texts: Iterable[str], n: int):
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def build_dense(texts: Iterable[str], total: int, out_dir: str | os.PathLike, cfg: DenseConfig,
                progress: bool = True) -> dict:
    """Encode `total` passages (row i = passage i) and write a faiss index to `out_dir`.

    Vectors are added as they are encoded; indexes that need training (IVF, PQ, SQ) buffer the
    first `train_size` vectors, train on them, then stream the rest. Embeddings are also saved
    (float16) so another index type can be built later without re-encoding.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = Encoder(cfg.encoder)
    spec = factory_string(cfg, encoder.dim, total)
    index = new_index(spec, encoder.dim, cfg)
    saved = None
    if cfg.save_embeddings:
        saved = np.lib.format.open_memmap(out_dir / EMBEDDINGS_FILE, "w+", np.float16, (total, encoder.dim))
    pending: list[np.ndarray] = []
    n_pending = 0
    row = 0
    bar = tqdm(total=total, desc=f"dense: encoding ({encoder.device})", unit="doc", disable=not progress)
    for batch in _batched_texts(texts, max(cfg.encoder.batch_size * 16, 256)):
        emb = encoder.encode(batch, is_query=False)
        if saved is not None:
            saved[row : row + len(emb)] = emb
        row += len(emb)
        if index.is_trained:
            index.add(emb)
        else:
            pending.append(emb)
            n_pending += len(emb)
            if n_pending >= min(cfg.train_size, total):
                _train_and_add(index, pending, cfg)
                pending, n_pending = [], 0
        bar.update(len(batch))
    bar.close()
    if pending:
        _train_and_add(index, pending, cfg)
    if row != total:
        raise IndexFormatError(f"expected {total} passages to encode, got {row}")
    if saved is not None:
        saved.flush()
        del saved
    return _write_index(index, out_dir, cfg, spec, encoder.dim)


def build_dense_from_embeddings(embeddings: np.ndarray, out_dir: str | os.PathLike, cfg: DenseConfig) -> dict:
    """Build another faiss index type from saved embeddings (no re-encoding)."""
    dim = embeddings.shape[1]
    spec = factory_string(cfg, dim, len(embeddings))
    index = new_index(spec, dim, cfg)
    step = 65536
    if not index.is_trained:
        rng = np.random.default_rng(cfg.seed)
        n_train = min(cfg.train_size, len(embeddings))
        sample = np.sort(rng.choice(len(embeddings), n_train, replace=False))
        index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
    for start in range(0, len(embeddings), step):
        index.add(np.ascontiguousarray(embeddings[start : start + step], dtype=np.float32))
    return _write_index(index, out_dir, cfg, spec, dim)


def _train_and_add(index, chunks: list[np.ndarray], cfg: DenseConfig) -> None:
    data = np.concatenate(chunks)
    rng = np.random.default_rng(cfg.seed)
    sample = data[rng.permutation(len(data))[: cfg.train_size]]
    index.train(sample)
    index.add(data)


def _write_index(index, out_dir: str | os.PathLike, cfg: DenseConfig, spec: str, dim: int) -> dict:
    import faiss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out_dir / INDEX_FILE))
    (out_dir / ENCODER_FILE).write_text(json.dumps(dataclasses.asdict(cfg.encoder), indent=2))
    stats = {"num_docs": int(index.ntotal), "dim": dim, "factory": spec, "index_type": cfg.index_type}
    (out_dir / META_FILE).write_text(json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------- searching


class DenseRanker:
    """Encode queries, search the faiss index. Query-time settings override the build's."""

    name = "dense"

    def __init__(self, index_dir: str | os.PathLike, device: str = "auto", ef_search: int = 128,
                 nprobe: int = 32, encoder: Encoder | None = None, blas_threshold: int | None = None):
        import faiss

        if blas_threshold is not None:
            faiss.cvar.distance_compute_blas_threshold = blas_threshold  # process-wide faiss setting

        index_dir = Path(index_dir)
        for f in (INDEX_FILE, ENCODER_FILE, META_FILE):
            if not (index_dir / f).is_file():
                raise IndexFormatError(f"{index_dir} is not a searchr1 dense index (no {f})")
        self.meta = json.loads((index_dir / META_FILE).read_text())
        enc_cfg = json.loads((index_dir / ENCODER_FILE).read_text())
        enc_cfg["device"] = device
        self.encoder = encoder or Encoder(EncoderConfig(**enc_cfg))
        try:
            self.index = faiss.read_index(str(index_dir / INDEX_FILE))
        except RuntimeError as e:
            raise IndexFormatError(f"cannot read {index_dir / INDEX_FILE}: {e}") from None
        if self.index.d != self.encoder.dim:
            raise IndexFormatError(
                f"{index_dir}: index dimension {self.index.d} != encoder dimension {self.encoder.dim}"
            )
        self.num_docs = int(self.index.ntotal)
        hnsw = _find(self.index, "hnsw")
        if hnsw is not None:
            hnsw.efSearch = ef_search
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = nprobe

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = empty_ranking(len(vectors), k)
        k_eff = min(k, self.num_docs)
        if k_eff and len(vectors):
            s, i = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k_eff)
            missing = i < 0
            s[missing] = -np.inf
            ids[:, :k_eff], scores[:, :k_eff] = i, s
        return ids, scores

    def rank(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search_vectors(self.encoder.encode(list(queries), is_query=True), k)
