"""The fused LSTM with its cell under `torch.compile`.

The same code as `fused` (`fused_cell`): the input projection of all steps stays one eager GEMM before
the loop, the loop stays Python, and each step's `fused_cell.lstm_cell` (the recurrent GEMM and the
pointwise math) runs as one Inductor graph, forward and backward, so the pointwise ops of a step
become one generated kernel. The cell compiles once per shape, whatever the sequence length.

`mode` goes to torch.compile. On CUDA, `mode="reduce-overhead"` adds CUDA graphs (CUDA graph trees):
each step's kernels, forward and backward, are replayed as one graph per step; every forward starts a
new iteration of the trees, and the returned state is copied out of their memory pool. UNTESTED
HERE: CUDA graphs need a GPU and none was available when this was written; `tests/test_fused.py`
holds that variant to nn.LSTM on CUDA (skipped without one), which the GPU check runs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import fused_cell
from .fused import FusedLSTM


class FusedCompiledLSTM(FusedLSTM):
    """`fused` with `fused_cell.lstm_cell` compiled by torch.compile (Inductor), the loop in Python."""

    description = "fused LSTM, its cell under torch.compile (Inductor)"
    runtime = "inductor"

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32,
                 mode: str | None = None):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        self.mode = mode
        with warnings.catch_warnings():  # Inductor's first import uses torch.jit.script_method, deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
            self._compiled = torch.compile(fused_cell.lstm_cell, mode=mode)

    def describe(self) -> str:
        return f"{self.description}, scope=cell, mode={self.mode or 'default'}"

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        W_x, W_h, b = self.params()
        graphs = self.mode == "reduce-overhead" and inputs.device.type == "cuda"
        if graphs:  # a new iteration of CUDA graph trees: the last call's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        outputs = []
        for XW in fused_cell.project_inputs(inputs, W_x, b):  # fused's loop, around the compiled cell
            H, C = self._compiled(XW, H, C, W_h)
            outputs.append(H)
        if graphs:  # the state outlives this iteration; the graphs' output buffers do not
            H, C = H.clone(), C.clone()
        return torch.stack(outputs), H, C
