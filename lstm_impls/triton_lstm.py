"""The fused LSTM with Triton kernels for the recurrent step, forward and backward (CUDA; triton is optional).

`fused`'s sequence (`fused_cell.LSTMFunction`: the input projection of all T steps in one GEMM
before the loop, the weights' gradients in one GEMM each over all T steps after backward's loop), with
each time step one Triton kernel: the recurrent gate GEMM fused with the cell's pointwise math
(`triton_kernels.lstm_step_forward`), and backward's step the recurrent GEMM's backward fused with
the cell's (`triton_kernels.lstm_step_backward`). It saves the outputs, the cell states and the activated
gates, 6 (B, H) values per step.

Runs on CUDA in float32 (TF32 in its GEMMs only where torch.backends.cuda.matmul.allow_tf32 says
so). With `TRITON_INTERPRET=1` in the environment when the kernels are first imported, Triton's
interpreter runs them on CPU tensors, and the implementation declares the CPU too: that is how the
tests check it without a GPU (`tests/test_fused.py`).

Layers, directions, batch_first and dropout as `fused` stacks them (each layer and direction the same
Triton sequence); no proj_size.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from . import fused_cell
from .fused import FusedLSTM

F32 = frozenset({torch.float32})
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
INSTALLED = importlib.util.find_spec("triton") is not None

# Tile sizes: a program computes BLOCK_B batch rows x BLOCK_H hidden units (all four gates of them),
# stepping through the GEMM's inner dimension BLOCK_K at a time. tl.dot wants every side >= 16.
BLOCK_B, BLOCK_H, BLOCK_K = 16, 32, 32


def _launch_args(B: int, H: int) -> tuple[tuple[int, int], dict]:
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    grid = (_cdiv(B, BLOCK_B), _cdiv(H, BLOCK_H))
    return grid, {"BLOCK_B": BLOCK_B, "BLOCK_H": BLOCK_H, "BLOCK_K": BLOCK_K, "PRECISION": precision}


def _cdiv(n: int, d: int) -> int:
    """ceil(n / d)."""
    return -(-n // d)


class TritonSteps:
    """`fused_cell.Steps` as Triton kernels: a step's recurrent GEMM and pointwise math in one kernel each way."""

    low_precision = False  # the kernels are float32's (the implementation declares float32 only)

    def forward(self, xw, h_prev, c_prev, W_h, h, c, gates) -> None:
        from .triton_kernels import lstm_step_forward

        B, H = h.shape
        grid, blocks = _launch_args(B, H)
        lstm_step_forward[grid](xw, h_prev, c_prev, W_h.contiguous(), h, c, gates, B, H, **blocks)

    def prepare_backward(self, gates, cs, c0) -> tuple[Tensor, ...]:
        return gates, cs, c0  # the kernels read the activated gates and the cell states as they are

    def backward(self, t, saved, dgates_next, W_h, dh_out, dc, dgates) -> Tensor:
        from .triton_kernels import lstm_step_backward

        gates, cs, c0 = saved
        B, H = dc.shape
        grid, blocks = _launch_args(B, H)
        has_next = dgates_next is not None  # at the last step the kernel reads no dgates_next
        lstm_step_backward[grid](dgates_next if has_next else dgates, W_h.contiguous(), dh_out, dc, gates[t], cs[t],
                                 cs[t - 1] if t else c0, dgates, B, H, HAS_NEXT=has_next, **blocks)
        return dc  # the kernel made it the gradient of c_prev, in place


class TritonLSTM(FusedLSTM):
    """`fused`'s parameters and input GEMM; the recurrent step forward and backward in Triton kernels."""

    description = "fused LSTM, each step one Triton kernel (gate GEMM + cell) forward and backward"
    dtypes = {"cuda": F32, **({"cpu": F32} if INTERPRETED else {})}

    @classmethod
    def unsupported_reason(cls, device: str | torch.device, dtype: torch.dtype, **config) -> str | None:
        if not INSTALLED:
            return "triton is not installed (pip install 'lstm-bench[triton]')"
        return super().unsupported_reason(device, dtype, **config)

    def describe(self) -> str:
        return self.description + (" (Triton interpreter)" if INTERPRETED else "")

    def make_steps(self) -> fused_cell.Steps:
        return TritonSteps()
