"""The fused LSTM with its pointwise math under `torch.compile`.

The same code as `fused` (`fused_cell`): the GEMMs stay eager (the input projection before the loop,
one recurrent GEMM per step, the weights' gradients after it), the loop stays Python, and the
pointwise math runs as Inductor graphs: each forward step's (`fused_cell.cell_forward`) and, once per
sequence, backward's factors (`fused_cell.backward_factors`). Backward's step is four ops, too few
for a compiled call to pay. Both graphs compile once per shape, whatever the sequence length; the
compile time shows in first_step_ms.

`mode` goes to torch.compile. On CUDA, `mode="reduce-overhead"` adds CUDA graphs (CUDA graph trees) to
the pointwise graphs; every forward starts a new iteration of the trees. UNTESTED HERE: CUDA graphs
need a GPU and none was available when this was written; `tests/test_fused.py` holds that variant to
`fused` on CUDA (skipped without one), which the GPU check runs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import fused_cell
from .base import State
from .fused import FusedLSTM


class FusedCompiledLSTM(FusedLSTM):
    """`fused` with `fused_cell.cell_forward` and `backward_factors` compiled by torch.compile (Inductor)."""

    description = "fused LSTM, its pointwise math under torch.compile (Inductor)"
    runtime = "inductor"

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32,
                 mode: str | None = None, **config):
        self.mode = mode
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)

    def make_steps(self) -> fused_cell.Steps:
        with warnings.catch_warnings():  # Inductor's first import uses torch.jit.script_method, deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
            return fused_cell.TorchSteps(torch.compile(fused_cell.cell_forward, mode=self.mode),
                                         torch.compile(fused_cell.backward_factors, mode=self.mode))

    def describe(self) -> str:
        return f"{self.description}, mode={self.mode or 'default'}"

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        device = (x.data if isinstance(x, PackedSequence) else x).device
        if self.mode == "reduce-overhead" and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration of CUDA graph trees, once for all layers
        return super().forward(x, state)
