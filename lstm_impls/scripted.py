"""The d2l scratch LSTM, its loop compiled by TorchScript (`torch.jit.script`)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import cell
from .base import reusing_compiled
from .scratch import ScratchLSTM

# torch.jit.script keeps one compiled function per Python function for the whole process, and with
# it the profiling executor's optimized plans: the second module to script `cell.lstm` would get the
# first one's warm graph, so its first calls would not show what scripting costs. These attributes
# (honoured by torch.jit's function cache) make every module script the chapter's code afresh.
for _fn in (cell.lstm, cell.lstm_cell, cell.lstmp, cell.lstmp_cell):
    _fn.__disable_jit_function_caching__ = True


_reused: dict[object, torch.jit.ScriptFunction] = {}  # under base.reuse_compiled(): one per function, per process


def script_lstm(fn=cell.lstm) -> tuple[torch.jit.ScriptFunction, bool]:
    """A new TorchScript compilation of the chapter's loop (and the cell it calls); `cell.lstmp` for proj_size.
    Under `lstm_impls.reuse_compiled()`, the one compiled for an earlier module instead: its optimized plan, once
    the profiling executor made it, serves every shape (the plans of a fresh and a reused function at another shape
    are the same graph, shapes aside), so only the first cell of a process pays the optimizing passes. Returns the
    function and whether it was reused."""
    if not reusing_compiled():
        return _script(fn), False
    reused = fn in _reused
    if not reused:
        _reused[fn] = _script(fn)
    return _reused[fn], reused


def _script(fn) -> torch.jit.ScriptFunction:
    # TorchScript is deprecated in torch 2.13 but still works; the warning is ours to silence,
    # here only, so users of the other implementations still see theirs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        return torch.jit.script(fn)


class ScriptedLSTM(ScratchLSTM):
    """The scratch LSTM's own `cell.lstm`, scripted on the first call and run by TorchScript's profiling executor.

    Whether TorchScript's fusers form fusion groups depends on the build and device (CPU fusion is
    off by default; on CUDA, training graphs may not fuse): the suite's description reads that from
    a profiled step.
    """

    description = "d2l scratch LSTM under torch.jit.script (TorchScript profiling executor)"
    runtime = "torchscript"

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32, **config):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)
        self._scripted: torch.jit.ScriptFunction | None = None  # one for every layer and direction

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        if self._scripted is None:  # scripted here, so the first call's time includes it
            self._scripted, self.reused_compiled = script_lstm(cell.lstmp if self.proj_size else cell.lstm)
        if self.proj_size:
            return self._scripted(inputs, H, C, self.params(layer, direction), self.projection(layer, direction))
        return self._scripted(inputs, H, C, self.params(layer, direction))
