"""Helpers shared by the integration tests (constants, corpus slicing, CLI runner)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

WIKI = Path(os.environ.get("SEARCHR1_TEST_WIKI", "/work/shared/data/corpus/wiki18_mini.jsonl"))
N_PASSAGES = 300

# Server limits of the shared test server (small, so that the limit tests stay cheap).
MAX_BODY_BYTES = 1_000_000
MAX_QUERIES_PER_REQUEST = 16

# Questions of the kind a Search-R1 rollout sends, plus some about topics in the 300 passages.
QUESTIONS = [
    "who wrote hamlet",
    "capital of france",
    "when was the aviation museum in ankara opened",
    "who wrote gone with the wind",
    "what is the geography of qatar like",
    "history of rome",
    "what is propaganda",
    "jack kerouac novels",
    "united kingdom election results",
    "what does capitalism mean",
    "who starred in the film gabriela",
    "steam locomotive museum",
]


def head_lines(src: Path, n: int, dst: Path, start: int = 0) -> Path:
    """Copy lines [start, start + n) of `src` to `dst`."""
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        for i, line in enumerate(f_in):
            if i >= start + n:
                break
            if i >= start:
                f_out.write(line)
    return dst


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of every file under `directory`."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 300, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`python -m searchr1 ARGS...` in a subprocess, with the hub offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "searchr1", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def search_r1_passages2string(retrieval_result: list) -> str:
    """Search-R1's `_passages2string` (search_r1/llm_agent/generation.py), verbatim."""
    format_reference = ""
    for idx, doc_item in enumerate(retrieval_result):
        content = doc_item["document"]["contents"]
        title = content.split("\n")[0]
        text = "\n".join(content.split("\n")[1:])
        format_reference += f"Doc {idx+1}(Title: {title}) {text}\n"
    return format_reference
