"""Triton kernels for one LSTM time step, forward and backward, each a gate GEMM fused with the cell's pointwise math.

Imported only when the `triton` implementation runs (triton is an optional extra). Under
`TRITON_INTERPRET=1`, set before this module is first imported, `triton.jit` makes interpreted
functions that run on CPU tensors: that is how the tests check these kernels without a GPU.

Layout as in `fused_cell`: W_h is (H, 4H), gate columns i, f, g, o (g is d2l's C_tilda); the state
and every per-step tensor is row-major and contiguous. One program computes a (BLOCK_B, BLOCK_H) tile
of the batch x hidden units, all four gates of those units, so the pointwise math needs nothing
from other programs.
"""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh through the sigmoid (tl has no tanh of its own): tanh(x) = 2 sigmoid(2x) - 1."""
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def lstm_step_forward(xw_ptr, h_prev_ptr, c_prev_ptr, w_h_ptr, h_ptr, c_ptr, gates_ptr, B, H,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                      PRECISION: tl.constexpr):
    """One step: gates = xw + h_prev @ W_h for a tile of rows and hidden units, then the cell.

    Writes h and c (B, H) and the activated gates (B, 4H), which the backward step reads.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, unit_ok = rows < B, units < H
    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):  # the gate GEMM, all four gates of these units at once
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(h_prev_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = w_h_ptr + ks[:, None] * (4 * H) + units[None, :]
        w_ok = k_ok[:, None] & unit_ok[None, :]
        acc_i += tl.dot(h, tl.load(w, mask=w_ok, other=0.0), input_precision=PRECISION)
        acc_f += tl.dot(h, tl.load(w + H, mask=w_ok, other=0.0), input_precision=PRECISION)
        acc_g += tl.dot(h, tl.load(w + 2 * H, mask=w_ok, other=0.0), input_precision=PRECISION)
        acc_o += tl.dot(h, tl.load(w + 3 * H, mask=w_ok, other=0.0), input_precision=PRECISION)

    ok = row_ok[:, None] & unit_ok[None, :]
    gate = rows[:, None] * (4 * H) + units[None, :]  # offsets of the i gate's columns; f, g, o follow by H
    I = tl.sigmoid(acc_i + tl.load(xw_ptr + gate, mask=ok, other=0.0))
    F = tl.sigmoid(acc_f + tl.load(xw_ptr + gate + H, mask=ok, other=0.0))
    C_tilda = _tanh(acc_g + tl.load(xw_ptr + gate + 2 * H, mask=ok, other=0.0))
    O = tl.sigmoid(acc_o + tl.load(xw_ptr + gate + 3 * H, mask=ok, other=0.0))
    state = rows[:, None] * H + units[None, :]
    C = F * tl.load(c_prev_ptr + state, mask=ok, other=0.0) + I * C_tilda
    tl.store(c_ptr + state, C, mask=ok)
    tl.store(h_ptr + state, O * _tanh(C), mask=ok)
    tl.store(gates_ptr + gate, I, mask=ok)
    tl.store(gates_ptr + gate + H, F, mask=ok)
    tl.store(gates_ptr + gate + 2 * H, C_tilda, mask=ok)
    tl.store(gates_ptr + gate + 3 * H, O, mask=ok)


@triton.jit
def lstm_step_backward(dgates_next_ptr, w_h_ptr, dh_out_ptr, dc_ptr, gates_ptr, c_ptr, c_prev_ptr, dgates_ptr,
                       B, H, HAS_NEXT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One step back: dh = dh_out + dgates_next @ W_h^T for a tile, then the cell's backward.

    dh_out is the gradient reaching this step's h from outside the recurrence (the output y[t]);
    dgates_next is the next step's gate gradient (B, 4H), absent (HAS_NEXT false) at the last step.
    Reads dc (the gradient of this step's c) and overwrites it with the gradient of c_prev; writes
    this step's gate gradient (B, 4H).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, unit_ok = rows < B, units < H
    ok = row_ok[:, None] & unit_ok[None, :]
    state = rows[:, None] * H + units[None, :]
    dH = tl.load(dh_out_ptr + state, mask=ok, other=0.0).to(tl.float32)
    if HAS_NEXT:  # the recurrent GEMM's backward: the gradient that h passed on through the next step's gates
        for k0 in range(0, 4 * H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < 4 * H
            dg = tl.load(dgates_next_ptr + rows[:, None] * (4 * H) + ks[None, :],
                         mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_h_ptr + units[:, None] * (4 * H) + ks[None, :], mask=unit_ok[:, None] & k_ok[None, :],
                        other=0.0)
            dH += tl.dot(dg, tl.trans(w), input_precision=PRECISION)

    gate = rows[:, None] * (4 * H) + units[None, :]
    I = tl.load(gates_ptr + gate, mask=ok, other=0.0)
    F = tl.load(gates_ptr + gate + H, mask=ok, other=0.0)
    C_tilda = tl.load(gates_ptr + gate + 2 * H, mask=ok, other=0.0)
    O = tl.load(gates_ptr + gate + 3 * H, mask=ok, other=0.0)
    tanh_C = _tanh(tl.load(c_ptr + state, mask=ok, other=0.0))
    dC = tl.load(dc_ptr + state, mask=ok, other=0.0) + dH * O * (1 - tanh_C * tanh_C)
    C_prev = tl.load(c_prev_ptr + state, mask=ok, other=0.0)
    tl.store(dgates_ptr + gate, dC * C_tilda * I * (1 - I), mask=ok)
    tl.store(dgates_ptr + gate + H, dC * C_prev * F * (1 - F), mask=ok)
    tl.store(dgates_ptr + gate + 2 * H, dC * I * (1 - C_tilda * C_tilda), mask=ok)
    tl.store(dgates_ptr + gate + 3 * H, dH * tanh_C * O * (1 - O), mask=ok)
    tl.store(dc_ptr + state, dC * F, mask=ok)
