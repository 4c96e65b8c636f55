"""Run `searchr1 serve` as a child process and learn its URL (tests, benchmarks, scripts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

from searchr1.errors import RetrieverUnavailableError

_READY = re.compile(r"searchr1: serving \S+ retrieval at (http://\S+)/retrieve")


class ServerProcess:
    """`with ServerProcess(["retriever.index=runs/index", "server.port=0"]) as url: ...`

    The child prints its URL once it listens; its output is kept (last 200 lines) so that a
    server that dies on start-up is reported with its own error message.
    """

    def __init__(self, overrides: Sequence[str] = (), config: str | None = None, env: dict | None = None,
                 startup_timeout_s: float = 180.0):
        self.cmd = [sys.executable, "-m", "searchr1", "serve"]
        if config:
            self.cmd += ["-c", config]
        self.cmd += list(overrides)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.output: deque[str] = deque(maxlen=200)
        self.url = ""

    def start(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env)
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                m = _READY.search(line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True, name="searchr1-server-output").start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.output)[-20:])
                raise RetrieverUnavailableError(f"`{' '.join(self.cmd)}` did not start serving:\n{tail}")
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
