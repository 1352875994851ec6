"""The fused LSTM with Triton kernels for the recurrent step, forward and backward (CUDA; triton is optional).

The plan of cuDNN's RNNs, written out: the input projection of all T steps is one GEMM before the
loop (`fused_cell.project_inputs`, as in `fused`); each step is one Triton kernel, the recurrent
gate GEMM fused with the cell's pointwise math (`triton_kernels.lstm_step_forward`); the backward
walks back in time with one kernel per step, the recurrent GEMM's backward fused with the cell's
(`triton_kernels.lstm_step_backward`), and the weight gradients are then one GEMM each over all
T steps, not T small ones as autograd computes them for `fused`. Forward and backward live in one
`torch.autograd.Function`; what it saves for backward is the outputs, the cell states and the
activated gates: 6 (B, H) values per step.

Runs on CUDA in float32 (TF32 in its GEMMs only where torch.backends.cuda.matmul.allow_tf32 says
so). With `TRITON_INTERPRET=1` in the environment when the kernels are first imported, Triton's
interpreter runs them on CPU tensors, and the implementation declares the CPU too: that is how the
tests check it without a GPU (`tests/test_triton.py`).
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


class TritonLSTMFunction(torch.autograd.Function):
    """The whole sequence: (x, h0, c0, W_x, W_h, b) -> (y, h, c), each step a Triton kernel both ways."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, W_x: Tensor, W_h: Tensor, b: Tensor):
        from .triton_kernels import lstm_step_forward

        T, B, _ = x.shape
        H = h0.shape[1]
        h0, c0, W_h = h0.contiguous(), c0.contiguous(), W_h.contiguous()
        xw = fused_cell.project_inputs(x, W_x, b)  # (T, B, 4H): every step's input GEMM and the bias, once
        y, cs, gates = x.new_empty(T, B, H), x.new_empty(T, B, H), torch.empty_like(xw)
        grid, blocks = _launch_args(B, H)
        for t in range(T):
            h_prev, c_prev = (y[t - 1], cs[t - 1]) if t else (h0, c0)
            lstm_step_forward[grid](xw[t], h_prev, c_prev, W_h, y[t], cs[t], gates[t], B, H, **blocks)
        ctx.save_for_backward(x, h0, c0, W_x, W_h, y, cs, gates)
        return y, y[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor):
        from .triton_kernels import lstm_step_backward

        x, h0, c0, W_x, W_h, y, cs, gates = ctx.saved_tensors
        T, B, I = x.shape
        H = h0.shape[1]
        dy = dy.contiguous()
        dgates = torch.empty_like(gates)
        dc = dc_n.contiguous().clone()  # the kernels turn it into the gradient of c0, step by step
        grid, blocks = _launch_args(B, H)
        for t in reversed(range(T)):
            dh_out = dy[t] + dh_n if t == T - 1 else dy[t]
            c_prev = cs[t - 1] if t else c0
            dgates_next = dgates[t + 1] if t < T - 1 else dgates[t]  # unread at the last step
            lstm_step_backward[grid](dgates_next, W_h, dh_out, dc, gates[t], cs[t], c_prev, dgates[t], B, H,
                                     HAS_NEXT=t < T - 1, **blocks)
        # The weight gradients over all steps at once, as cuDNN computes them.
        dG = dgates.view(T * B, 4 * H)
        h_prev = torch.cat([h0.unsqueeze(0), y[:-1]]).view(T * B, H)
        dx = (dG @ W_x.T).view(T, B, I) if ctx.needs_input_grad[0] else None
        dh0 = dgates[0] @ W_h.T
        return dx, dh0, dc, x.reshape(T * B, I).T @ dG, h_prev.T @ dG, dG.sum(0)


class TritonLSTM(FusedLSTM):
    """`fused`'s parameters and input GEMM; the recurrent step forward and backward in Triton kernels."""

    description = "fused LSTM, each step one Triton kernel (gate GEMM + cell) forward and backward"
    dtypes = {"cuda": F32, **({"cpu": F32} if INTERPRETED else {})}

    @classmethod
    def unsupported_reason(cls, device: str | torch.device, dtype: torch.dtype) -> str | None:
        if not INSTALLED:
            return "triton is not installed (pip install 'lstm-bench[triton]')"
        return super().unsupported_reason(device, dtype)

    def describe(self) -> str:
        return self.description + (" (Triton interpreter)" if INTERPRETED else "")

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return TritonLSTMFunction.apply(inputs, H, C, *self.params())
