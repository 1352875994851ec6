"""The fused LSTM, shared by every implementation that runs it (`fused`, `fused_compiled`, `triton`).

The chapter's cell, rearranged the way cuDNN arranges it (NVIDIA's "Optimizing Recurrent Neural
Networks in cuDNN 5"):

- the four gates' weights are one matrix each: `W_x` (I, 4H) and `W_h` (H, 4H), columns in nn.LSTM's
  gate order i, f, g (the candidate memory cell, d2l's C_tilda), o; one bias `b` (4H,);
- the input projection does not depend on the state, so the inputs of all T steps go through one
  GEMM before the loop, with the bias added there, once (`project_inputs`);
- each step is then one (B, H) x (H, 4H) GEMM that adds the step's projected input, and the
  pointwise math on the four chunks of its result (`cell_forward`);
- backward walks back in time, one (B, 4H) x (4H, H) GEMM per step for the state's gradient and the
  pointwise math (`cell_backward`); the weights' gradients wait until every step's gate gradients
  exist and are then one GEMM each, over all T steps at once, instead of T small ones added up.

`LSTMFunction` is that sequence, forward and backward, as one autograd.Function. What runs a step
is a `Steps` object: `TorchSteps` runs `cell_forward`/`cell_backward` as they are (`fused`) or
compiled (`fused_compiled`); `triton` passes its own kernels. So the implementations differ only in
how a step runs, and they save the same tensors: the outputs, every step's c and activated gates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Parameter names and order: the gates' weights concatenated, one bias.
PARAM_NAMES = ("W_x", "W_h", "b")


def project_inputs(inputs: Tensor, W_x: Tensor, b: Tensor) -> Tensor:
    """The input projection of every time step of inputs (T, B, I), bias included: one GEMM -> (T, B, 4H)."""
    T, B, I = inputs.shape
    return torch.addmm(b, inputs.reshape(T * B, I), W_x).view(T, B, -1)


def cell_forward(gates: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step's pointwise math: gate pre-activations (B, 4H) and C_{t-1} -> activated gates, C_t, H_t."""
    I, F, C_tilda, O = gates.chunk(4, 1)
    I, F, C_tilda, O = torch.sigmoid(I), torch.sigmoid(F), torch.tanh(C_tilda), torch.sigmoid(O)
    C = F * C + I * C_tilda
    H = O * torch.tanh(C)
    return torch.cat([I, F, C_tilda, O], 1), C, H


def cell_backward(dH: Tensor, dC: Tensor, gates: Tensor, C: Tensor, C_prev: Tensor) -> tuple[Tensor, Tensor]:
    """The chain rule through one step's pointwise math: the gradients dH, dC of H_t, C_t, its activated
    gates and C_t, C_{t-1} -> the gradient of the gate pre-activations (B, 4H) and of C_{t-1}."""
    I, F, C_tilda, O = gates.chunk(4, 1)
    tanh_C = torch.tanh(C)  # recomputed: cheaper than keeping T of them
    dC = dC + dH * O * (1 - tanh_C * tanh_C)
    d_gates = torch.cat([dC * C_tilda * I * (1 - I),  # sigmoid' = s (1 - s)
                         dC * C_prev * F * (1 - F),
                         dC * I * (1 - C_tilda * C_tilda),  # tanh' = 1 - tanh^2
                         dH * tanh_C * O * (1 - O)], 1)
    return d_gates, dC * F


class Steps(Protocol):
    """What runs one time step; each writes into the buffers it is given (time slices of LSTMFunction's)."""

    def forward(self, xw: Tensor, h_prev: Tensor, c_prev: Tensor, W_h: Tensor,
                h: Tensor, c: Tensor, gates: Tensor) -> None:
        """gates <- the activated gates of xw + h_prev @ W_h; c, h <- the new state."""

    def backward(self, dgates_next: Tensor | None, W_h: Tensor, dh_out: Tensor, dc: Tensor, gates: Tensor,
                 c: Tensor, c_prev: Tensor, dgates: Tensor) -> Tensor:
        """dgates <- step t's gate gradients, from dh = dh_out + dgates_next @ W_h.T (dgates_next: step
        t+1's, None at the last step) and dc (of c_t); returns the gradient of c_{t-1}."""


class TorchSteps:
    """A step in PyTorch ops: the GEMM, then `cell_forward` / `cell_backward`, or compiled versions of them."""

    def __init__(self, forward_math: Callable = cell_forward, backward_math: Callable = cell_backward):
        self.forward_math, self.backward_math = forward_math, backward_math

    def forward(self, xw, h_prev, c_prev, W_h, h, c, gates) -> None:
        new_gates, new_c, new_h = self.forward_math(torch.addmm(xw, h_prev, W_h), c_prev)
        gates.copy_(new_gates)
        c.copy_(new_c)
        h.copy_(new_h)

    def backward(self, dgates_next, W_h, dh_out, dc, gates, c, c_prev, dgates) -> Tensor:
        dh = dh_out if dgates_next is None else torch.addmm(dh_out, dgates_next, W_h.T)
        new_dgates, dc_prev = self.backward_math(dh, dc, gates, c, c_prev)
        dgates.copy_(new_dgates)
        return dc_prev


def run_steps(x: Tensor, h0: Tensor, c0: Tensor, W_x: Tensor, W_h: Tensor, b: Tensor, steps: Steps, *,
              keep_gates: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The forward loop -> outputs y, every step's c (T, B, H), and the activated gates of every step
    (T, B, 4H) when keep_gates, else of the last step only (inference needs none of them)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    xw = project_inputs(x, W_x, b)  # (T, B, 4H): every step's input GEMM and the bias, once
    y, cs = x.new_empty(T, B, H), x.new_empty(T, B, H)
    gates = torch.empty_like(xw) if keep_gates else xw.new_empty(1, B, 4 * H)
    for t in range(T):
        h_prev, c_prev = (y[t - 1], cs[t - 1]) if t else (h0, c0)
        steps.forward(xw[t], h_prev, c_prev, W_h, y[t], cs[t], gates[t if keep_gates else 0])
    return y, cs, gates


class LSTMFunction(torch.autograd.Function):
    """The whole sequence: (x, h0, c0, W_x, W_h, b, steps) -> (y, h_T, c_T), each step run by `steps`.

    Saves the outputs y, every step's c and activated gates (T, B, 4H); backward computes the gate
    gradients of all steps, then the weights' gradients from them in one GEMM each.
    """

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, W_x: Tensor, W_h: Tensor, b: Tensor, steps: Steps):
        h0, c0 = h0.contiguous(), c0.contiguous()
        y, cs, gates = run_steps(x, h0, c0, W_x, W_h, b, steps, keep_gates=True)
        ctx.steps = steps
        ctx.save_for_backward(x, h0, c0, W_x, W_h, y, cs, gates)
        return y, y[-1].clone(), cs[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor):
        x, h0, c0, W_x, W_h, y, cs, gates = ctx.saved_tensors
        T, B, I = x.shape
        H = h0.shape[1]
        dy = dy.contiguous()
        dgates = torch.empty_like(gates)
        dc = dc_n.contiguous().clone()  # becomes the gradient of c0, step by step (Triton's kernels: in place)
        for t in reversed(range(T)):
            dh_out = dy[t] + dh_n if t == T - 1 else dy[t]
            dc = ctx.steps.backward(dgates[t + 1] if t < T - 1 else None, W_h, dh_out, dc, gates[t], cs[t],
                                    cs[t - 1] if t else c0, dgates[t])
        # The weights' gradients over all steps at once, as cuDNN computes them.
        dG = dgates.view(T * B, 4 * H)
        dW_h = torch.addmm(h0.T @ dgates[0], y[:-1].reshape((T - 1) * B, H).T, dG[B:])  # h_{t-1} of t = 0, then 1..
        dx = (dG @ W_x.T).view(T, B, I) if ctx.needs_input_grad[0] else None
        dh0 = dgates[0] @ W_h.T if ctx.needs_input_grad[1] else None
        return dx, dh0, dc, x.reshape(T * B, I).T @ dG, dW_h, dG.sum(0), None


def lstm(inputs: Tensor, H: Tensor, C: Tensor, params: list[Tensor], steps: Steps) -> tuple[Tensor, Tensor, Tensor]:
    """The fused LSTM over inputs (T, B, I), each step run by steps; -> outputs, H, C.

    Without autograd (inference, or nothing that needs a gradient) the loop runs alone and keeps no gates."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (inputs, H, C, *params)):
        return LSTMFunction.apply(inputs, H, C, *params, steps)
    y, cs, _ = run_steps(inputs, H.contiguous(), C.contiguous(), *params, steps, keep_gates=False)
    return y, y[-1].clone(), cs[-1].clone()
