"""The d2l scratch LSTM under `torch.compile`.

Two scopes: "cell" compiles one time step (`cell.lstm_cell`) and keeps the chapter's Python loop;
"loop" compiles the whole loop (`cell.lstm`), which Dynamo unrolls over T, so its compile time
grows with the sequence length and every new T compiles again. Default: "cell". Measured at the
d2l config (B=32, T=35, I=28, H=256, training step) on a 2-core CPU with cold Inductor caches: the
first step took 12.7 s with "cell" and 35.5 s with "loop"; steady steps were 29.6 ms against
37.0 ms (a warm-cache run gave 28.0 ms against 22.6 ms, so neither wins steadily on this CPU). The
cell scope costs a third of the compile time, and no more at longer sequences.

With proj_size the compiled function is the projected cell (`cell.lstmp_cell`) or loop (`cell.lstmp`).
Every layer and direction calls the same compiled function; layers whose inputs differ in size
(layer 0 reads input_size, the others directions * H_out) are compiled for each shape.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from . import cell
from .scratch import ScratchLSTM

Scope = Literal["cell", "loop"]


class CompiledLSTM(ScratchLSTM):
    """The scratch LSTM's own cell (or loop) compiled by torch.compile (Inductor)."""

    description = "d2l scratch LSTM under torch.compile (Inductor)"
    runtime = "inductor"

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32,
                 mode: str | None = None, scope: Scope = "cell", **config):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)
        if scope not in ("cell", "loop"):
            raise ValueError(f"scope must be 'cell' or 'loop', got {scope!r}")
        self.mode, self.scope = mode, scope
        with warnings.catch_warnings():  # Inductor's first import uses torch.jit.script_method, deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
            if self.proj_size:
                self._compiled = torch.compile(cell.lstmp_cell if scope == "cell" else cell.lstmp, mode=mode)
            else:
                self._compiled = torch.compile(cell.lstm_cell if scope == "cell" else cell.lstm, mode=mode)

    def describe(self) -> str:
        return f"{self.description}, scope={self.scope}, mode={self.mode or 'default'}"

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        params = self.params(layer, direction)
        extra = (self.projection(layer, direction),) if self.proj_size else ()  # W_hr, for the projected cell
        if self.scope == "loop":
            return self._compiled(inputs, H, C, params, *extra)
        outputs = []
        for X in inputs:  # the chapter's loop, around the compiled cell
            H, C = self._compiled(X, H, C, params, *extra)
            outputs.append(H)
        return torch.stack(outputs), H, C
