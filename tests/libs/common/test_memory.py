"""The allocator settings: a process relaying large chunks stops faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from libs.common.memory import tune_malloc

# In a fresh interpreter: what a proxy relaying a body does to the heap, pieces of varying size
# (as the socket delivers them, as they are joined and framed) allocated, written in full, and
# freed a few chunks later; the minor page faults that costs.
_CHUNKS = """
import random, resource, sys
from libs.common.memory import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
pieces = random.Random(7)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
held = []
for _ in range(2000):
    held.append(b"x" * pieces.choice([65536, 131072, 200000, 262144, 262151, 524288]))
    if len(held) > 3:
        held.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHUNKS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_chunks_stop_costing_a_page_fault_per_page() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # Default glibc: large buffers keep coming back from the kernel zeroed, a fault per 4 KiB
    # (~29k here, ~115 MiB faulted in for ~600 MiB allocated).
    assert default > 10_000, default
    assert tuned < 2_000, tuned


def test_tuning_reports_whether_it_applied() -> None:
    assert tune_malloc() is True  # glibc here; False (and nothing changed) elsewhere
