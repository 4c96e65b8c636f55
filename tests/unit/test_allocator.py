"""glibc malloc thresholds (`searchr1.allocator`): when they are set, and that they keep freed blocks."""

import json
import os
import platform
import subprocess
import sys

import pytest

from searchr1.allocator import THRESHOLD, tune_malloc, tuning_wanted

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# A step-like loop: a 64 MiB input times a weight gives a 64 MiB product, then its softmax (64 MiB),
# all freed; prints what tune_malloc set and the minor page faults of the last 6 of 12 loops (the
# heap has reached its size by then). Above glibc's largest dynamic mmap threshold (32 MiB), each of
# those blocks is a fresh mmap whose 16,384 pages fault on first touch, unless the tuned thresholds
# keep freed blocks in the heap for reuse.
CHILD = """
import json, resource
from searchr1.allocator import tune_malloc
applied = tune_malloc()
import torch
w = torch.randn(1024, 1024)
for i in range(12):
    if i == 6:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.randn(16384, 1024) @ w
    y = x.softmax(-1)
    del x, y
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _child(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "SEARCHR1_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuning_is_skipped_when_disabled_or_when_the_user_set_thresholds():
    assert tuning_wanted({})
    assert tuning_wanted({"SEARCHR1_MALLOC_TUNING": "1"})
    for off in ("0", "false", "Off", "no"):
        assert not tuning_wanted({"SEARCHR1_MALLOC_TUNING": off})
    assert not tuning_wanted({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert not tuning_wanted({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})


def test_threshold_must_fit_mallopts_int():
    with pytest.raises(ValueError, match="threshold"):
        tune_malloc(2 ** 31)
    with pytest.raises(ValueError, match="threshold"):
        tune_malloc(0)


@glibc
def test_tuned_process_reuses_freed_blocks_instead_of_faulting_fresh_pages():
    default = _child(SEARCHR1_MALLOC_TUNING="0")
    tuned = _child()
    assert default["applied"] == {}
    assert tuned["applied"] == {"mmap_threshold": THRESHOLD, "trim_threshold": THRESHOLD}
    pages = 6 * 3 * 2**26 // 4096  # 6 loops of three 64 MiB blocks
    assert default["faults"] > pages // 2  # every loop maps and touches fresh blocks
    assert tuned["faults"] < default["faults"] // 5


@glibc
def test_user_thresholds_are_left_alone():
    assert _child(MALLOC_TRIM_THRESHOLD_=str(1 << 20))["applied"] == {}
