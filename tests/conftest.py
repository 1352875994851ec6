"""Shared fixtures: the tiny shape every implementation test uses (one torch.compile for all)."""

import os

import pytest
import torch

from bench.instruments.env import pin_tf32

# Under pytest-xdist (the README's `-n 2`) its workers say so in the environment, and pytest-benchmark, reading that,
# turns itself off: in the `lstm-bench run` sessions the tests start (processes that inherit the environment, and
# pytest.main in this one) it would refuse --benchmark-only. Those sessions are not xdist's workers.
for _name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_name, None)

# One small shape for every test that runs all implementations, so `compiled` compiles once.
TINY = {"seq_len": 5, "batch_size": 3, "input_size": 4, "hidden_size": 6}


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


@pytest.fixture
def tf32_off():
    """float32 means float32: no TF32 in cuBLAS or cuDNN while the test runs."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    pin_tf32(False)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
