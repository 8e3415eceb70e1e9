"""The allocator settings: a process relaying large chunks stops faulting in fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from libs.common.memory import glibc, tune_malloc

pytestmark = pytest.mark.skipif(not glibc(), reason="glibc's allocator")

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
# What an operator may set for glibc: each run starts from glibc's own defaults.
_OPERATOR = ("MALLOC_", "GLIBC_TUNABLES")


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OPERATOR)}
    done = subprocess.run(
        [sys.executable, "-c", _CHUNKS, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(done.stdout)


def test_large_chunks_stop_costing_a_page_fault_per_page() -> None:
    default = _faults("default")
    if default < 5_000:  # e.g. transparent huge pages for malloc ("always"): nothing to save
        pytest.skip(f"this host's allocator faults {default} pages here by default")
    tuned = _faults("tuned")
    # glibc's defaults here: ~29k faults (~115 MiB faulted in for ~600 MiB allocated).
    assert tuned * 10 < default, (tuned, default)


def test_tuning_applies_on_glibc_and_yields_to_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert tune_malloc() is False  # the operator's setting stands
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    for name in [k for k in os.environ if k.startswith(_OPERATOR)]:
        monkeypatch.delenv(name)
    assert tune_malloc() is True
