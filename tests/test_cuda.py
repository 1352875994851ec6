"""CUDA paths: events of the allocator, NVML, the suite on a GPU. Skipped without a CUDA device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.grid import Cell
from bench.instruments.env import environment
from bench.instruments.measure import (
    Subject,
    breakdown,
    cuda_peak,
    measure_memory,
    nvml_process_used_bytes,
    start_runtimes,
    storage_bytes,
)
from bench.instruments.what_ran import what_ran

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (CPU-only torch or no GPU): CUDA paths untested here")
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def test_cuda_probe_measures_a_known_allocation_pattern_exactly():
    device = torch.device("cuda")
    kept = [torch.empty(3 * MiB, dtype=torch.uint8, device=device)]

    def pattern():
        a = torch.empty(1 * MiB, dtype=torch.uint8, device=device)
        b = torch.empty(2 * MiB, dtype=torch.uint8, device=device)
        del a
        c = torch.empty(5 * MiB, dtype=torch.uint8, device=device)
        del b, c

    memory = cuda_peak(pattern, device)
    assert memory.start_bytes >= 3 * MiB
    assert memory.peak_bytes - memory.start_bytes == 7 * MiB  # 1 + 2 - 1 + 5
    assert memory.peak_reserved_bytes >= memory.peak_bytes
    if memory.process_used_bytes is not None:
        assert memory.process_used_bytes >= memory.peak_reserved_bytes  # NVML adds the context
    del kept


def test_nvml_and_environment_name_the_gpu():
    env = environment("cuda")
    assert env["gpu_total_bytes"] > 0 and env["gpu_name"] and env["gpu_driver"]
    used, note = nvml_process_used_bytes(torch.device("cuda"))
    assert (used is not None and used > 0) or "not measured" in note


@pytest.mark.parametrize("impl", ["scratch", "cudnn"])
def test_breakdown_on_cuda_adds_up_with_library_memory_apart(impl):
    device = torch.device("cuda")
    start_runtimes(device)
    subject = Subject(Cell(impl, "cuda", "float32", "train", 32, 256, 35, 28))
    subject.step()
    memory = measure_memory(subject)
    parts = breakdown(subject, memory.peak_bytes, memory.library_bytes)
    assert parts.activation_bytes > 0 and parts.grad_bytes == parts.param_bytes
    assert sum(vars(parts).values()) + memory.library_bytes == memory.peak_bytes
    # cuBLAS keeps a workspace per handle and stream (forward's thread, autograd's): 8 MiB+ each, 32 on sm_90
    assert memory.library_bytes >= 8 * MiB
    assert memory.start_bytes == memory.library_bytes + storage_bytes(subject.live_tensors())
    assert (memory.context_bytes is not None and memory.context_bytes > 0) or "not measured" in memory.notes


@pytest.mark.parametrize("dtype, says", [("float32", "flattened weights"), ("float16", "flattened weights"),
                                         ("bfloat16", "copied into a new buffer every call")])
def test_cudnn_description_says_whether_weights_are_copied(dtype, says):
    """flatten_parameters skips bfloat16, so nn.LSTM hands cuDNN loose weights and it copies them every call."""
    subject = Subject(Cell("cudnn", "cuda", dtype, "train", 4, 64, 5, 28))
    subject.step()
    ran = what_ran(subject.step, subject.device)
    assert "cuDNN _cudnn_rnn" in ran and says in ran and says in subject.model.rnn.describe()


def test_suite_on_cuda_writes_device_figures(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--results-dir", str(tmp_path), "--run-id", "g",
                           "--device", "cuda", "--batch-sizes", "16", "--hidden-sizes", "64", "--seq-len", "5",
                           "--impls", "scratch,cudnn", "--dtype", "float32,bfloat16"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "g" / "measurements.csv")
    assert (df.status == "ok").all() and len(df) == 4
    assert (df.peak_reserved_bytes >= df.peak_bytes).all() and (df.library_bytes > 0).all()
    assert ((df.process_used_bytes > df.peak_bytes) | df.notes.str.contains("not measured", na=False)).all()
    assert (df.param_bytes + df.grad_bytes + df.optimizer_bytes + df.activation_bytes + df.workspace_bytes
            + df.library_bytes == df.peak_bytes).all()
    assert df[df.impl == "cudnn"].description.str.contains("cuDNN").all()
    env = json.loads((tmp_path / "g" / "environment.json").read_text())
    assert env["gpu_name"] and env["tf32_matmul"] is False
