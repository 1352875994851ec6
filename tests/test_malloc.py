"""The suite's C allocator policy (bench/instruments/malloc.py), checked on what it is for: page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.instruments.malloc import STEADY_TEXT, set_malloc, steady_unavailable

#: a fresh process under a policy: oneDNN's LSTM training step at B64 H256 (its workspace is 36 MiB, above glibc's
#: largest dynamic mmap threshold, 32 MiB), warmed up, then its minor page faults per step
FAULTS = """
import json, resource, sys, torch
from bench.instruments.malloc import set_malloc
recorded = set_malloc(sys.argv[1])
torch.set_num_threads(1)
from bench.grid import Cell
from bench.instruments.measure import Subject
subject = Subject(Cell("cudnn", "cpu", "float32", "train", 64, 256, 35, 28))
for _ in range(8):
    subject.step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    subject.step()
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8, "recorded": recorded}))
"""


def faults_per_step(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, policy], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(steady_unavailable() is not None, reason=steady_unavailable() or "")
def test_steady_malloc_keeps_a_steps_memory_mapped_instead_of_faulting_it_in_each_step():
    default, steady = faults_per_step("default"), faults_per_step("steady")
    assert default["recorded"] == "default" and steady["recorded"] == STEADY_TEXT
    assert default["faults"] > 2000  # glibc maps the workspace anew each step: each page written faults (~5,300)
    assert steady["faults"] < default["faults"] / 4  # kept in the heap: its pages stay mapped (0-600)


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown malloc policy"):
        set_malloc("jemalloc")
