"""The d2l scratch LSTM, its loop compiled by TorchScript (`torch.jit.script`)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from . import cell
from .scratch import ScratchLSTM


@functools.cache
def _scripted_lstm() -> torch.jit.ScriptFunction:
    # TorchScript is deprecated in torch 2.13 but still works; the warning is ours to silence,
    # here only, so users of the other implementations still see theirs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        return torch.jit.script(cell.lstm)


class ScriptedLSTM(ScratchLSTM):
    """The scratch LSTM's own `cell.lstm`, run by TorchScript's profiling executor (it fuses after warm-up)."""

    description = "d2l scratch LSTM under torch.jit.script (TorchScript, fuses after warm-up)"

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _scripted_lstm()(inputs, H, C, self.params())
