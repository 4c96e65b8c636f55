"""searchr1: train LLMs with RL to reason and call a search engine (Search-R1), serve it, evaluate.

Importing the package is cheap: heavy dependencies (torch, faiss, transformers) are imported by
the modules that need them.
"""

__version__ = "0.1.0"
