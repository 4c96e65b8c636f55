"""The search engine: corpus -> indexes (BM25, dense, hybrid) -> `Retriever`, in process or over HTTP."""

from searchr1.retrieval.base import Hit, Retriever
from searchr1.retrieval.client import HttpRetriever
from searchr1.retrieval.local import IndexRetriever, open_index, open_retriever

__all__ = ["Hit", "HttpRetriever", "IndexRetriever", "Retriever", "open_index", "open_retriever"]
