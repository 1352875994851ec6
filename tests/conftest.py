"""Shared fixtures: the tiny shape every implementation test uses (one torch.compile for all)."""

import pytest

# One small shape for every test that runs all implementations, so `compiled` compiles once.
TINY = {"seq_len": 5, "batch_size": 3, "input_size": 4, "hidden_size": 6}


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)
