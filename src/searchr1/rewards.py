"""Answer matching, shared by retrieval metrics, training rewards and evaluation.

Normalisation is SQuAD's (Rajpurkar et al. 2016; the official evaluation script): lowercase,
drop punctuation, drop the articles a/an/the, squeeze whitespace.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """True when some normalised gold answer occurs in the normalised text as whole words."""
    haystack = f" {normalize_answer(text)} "
    return any((needle := normalize_answer(a)) and f" {needle} " in haystack for a in answers)
