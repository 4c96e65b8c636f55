"""The Search-R1 paper's published exact-match numbers for Qwen2.5-3B, to print beside ours.

Source: arXiv 2503.09516v5 (COLM 2025), Table 2 (main results; the Search-R1 rows are PPO, the
paper's default) and Table 3 (PPO against GRPO). E5 retriever over the 2018 Wikipedia dump, top-3
passages; NQ and HotpotQA train sets; EM on each benchmark's test/dev split. The arXiv page itself
was not reachable from the machine that wrote this; the numbers are those of four independent
copies of the tables, which agree row for row. Not re-measured here.
"""

from __future__ import annotations

SOURCE = "Search-R1 paper (arXiv 2503.09516v5), Qwen2.5-3B, EM; Tables 2 and 3"
COLUMNS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wiki", "musique", "bamboogle")
COLUMN_NAMES = {"nq": "NQ", "triviaqa": "TriviaQA", "popqa": "PopQA", "hotpotqa": "HotpotQA", "2wiki": "2Wiki",
                "2wikimultihopqa": "2Wiki", "musique": "MuSiQue", "bamboogle": "Bamboogle"}
#: Our dataset labels (a benchmark's data_source) that name a paper column differently.
ALIASES = {"2wikimultihopqa": "2wiki"}

#: row -> (which of our arms it corresponds to, or None; EM per COLUMNS; the paper's Avg.)
ROWS: dict[str, tuple[str | None, tuple[float, ...], float]] = {
    "Direct inference": ("direct", (0.106, 0.288, 0.108, 0.149, 0.244, 0.020, 0.024), 0.134),
    "RAG": ("rag", (0.348, 0.544, 0.387, 0.255, 0.226, 0.047, 0.080), 0.270),
    "SFT": (None, (0.249, 0.292, 0.104, 0.186, 0.248, 0.044, 0.112), 0.176),
    "R1-base": ("r1", (0.226, 0.455, 0.173, 0.201, 0.268, 0.055, 0.224), 0.229),
    "R1-instruct": ("r1", (0.210, 0.449, 0.171, 0.208, 0.275, 0.060, 0.192), 0.224),
    "Search-R1-base (PPO)": ("ppo", (0.406, 0.587, 0.435, 0.284, 0.273, 0.049, 0.088), 0.303),
    "Search-R1-instruct (PPO)": ("ppo", (0.341, 0.545, 0.378, 0.324, 0.319, 0.103, 0.264), 0.325),
    "Search-R1-base (GRPO)": ("grpo", (0.421, 0.583, 0.413, 0.297, 0.274, 0.066, 0.128), 0.312),
    "Search-R1-instruct (GRPO)": ("grpo", (0.397, 0.565, 0.391, 0.331, 0.310, 0.124, 0.232), 0.336),
}


def table_rows(labels: list[str]) -> dict:
    """The paper's rows restricted to the datasets a study evaluates (by benchmark name); empty
    when it evaluates none of them (e.g. the synthetic world), since numbers on other data do not
    compare."""
    cols = [label for label in labels if ALIASES.get(label, label) in COLUMNS]
    if not cols:
        return {"source": SOURCE, "columns": [], "rows": {}}
    rows = {name: {"arm": arm, **{c: em[COLUMNS.index(ALIASES.get(c, c))] for c in cols}, "average": avg}
            for name, (arm, em, avg) in ROWS.items()}
    return {"source": SOURCE, "columns": cols, "rows": rows}
