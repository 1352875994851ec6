"""Implementations that fail on purpose, for the failure-row tests (loaded as broken_impl:Class)."""

import torch

from lstm_impls import LSTMImpl
from lstm_impls.base import FLOATS
from lstm_impls.scratch import ScratchLSTM


class BrokenLSTM(ScratchLSTM):
    """Raises in forward, like a bug in an implementation."""

    description = "raises on purpose"

    def forward(self, x, state=None):
        raise RuntimeError("broken on purpose\nsecond line")


class CudaOnlyLSTM(LSTMImpl):
    """Declares CUDA only, so a CPU cell is unsupported."""

    description = "declares cuda only"
    dtypes = {"cuda": FLOATS}

    def forward(self, x, state=None):
        return torch.zeros(x.shape[0], x.shape[1], self.hidden_size), state


class DivergingLSTM(ScratchLSTM):
    """Runs, but its outputs are nan: the loss is not finite, like float16 training that diverged."""

    description = "diverges on purpose"

    def forward(self, x, state=None):
        y, (h, c) = super().forward(x, state)
        return y * float("nan"), (h, c)
