"""The fused LSTM, shared by every implementation that runs it (`fused`, `fused_compiled`, `triton`).

The chapter's cell, rearranged the way cuDNN arranges it (NVIDIA's "Optimizing Recurrent Neural
Networks in cuDNN 5"):

- the four gates' weights are one matrix each: `W_x` (I, 4H) and `W_h` (H, 4H), columns in nn.LSTM's
  gate order i, f, g (the candidate memory cell, d2l's C_tilda), o; one bias `b` (4H,);
- the input projection does not depend on the state, so the inputs of all T steps go through one
  GEMM before the loop, with the bias added there, once (`project_inputs`);
- each step is then one (B, H) x (H, 4H) GEMM that adds the step's projected input, and the
  pointwise math on the four chunks of its result (`cell_forward`);
- the pointwise chain rule's factors that do not depend on the gradients are computed for all T
  steps at once after the forward loop (`backward_factors`, in the gates' buffer);
- backward walks back in time, one (B, 4H) x (4H, H) GEMM per step for the state's gradient and four
  pointwise ops (`cell_backward`); the weights' gradients wait until every step's gate gradients
  exist and are then one GEMM each, over all T steps at once, instead of T small ones added up.

`LSTMFunction` is that sequence, forward and backward, as one autograd.Function. What runs a step
is a `Steps` object: `TorchSteps` runs `cell_forward`/`backward_factors` as they are (`fused`) or
compiled (`fused_compiled`); `triton` passes its own kernels. So the implementations differ only in
how a step runs.
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


def cell_forward(gates: Tensor, C_prev: Tensor, C: Tensor, H: Tensor) -> None:
    """One step's pointwise math, in place: gates (B, 4H) holds the step's pre-activations and becomes
    the activated gates I, F, C_tilda, O; C and H (B, H) receive the new state. Allocates nothing."""
    H_ = C.shape[1]
    gates[:, :2 * H_].sigmoid_()  # I and F
    gates[:, 2 * H_:3 * H_].tanh_()  # C_tilda
    gates[:, 3 * H_:].sigmoid_()  # O
    I, F, C_tilda, O = gates.chunk(4, 1)
    torch.mul(F, C_prev, out=C)
    C.addcmul_(I, C_tilda)  # C = F * C_prev + I * C_tilda
    torch.tanh(C, out=H)
    H.mul_(O)  # H = O * tanh(C)


def backward_factors(gates: Tensor, cs: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What backward multiplies by, for all T steps at once, after the forward loop.

    The chain rule through a step, with dh and dc the gradients of h_t and c_t:
        dc_t += dh * O (1 - tanh(c_t)^2)                      = dh * KC
        d pre-activation of I = dc_t * C_tilda * I (1 - I)     = dc_t * K_I
        ... of F = dc_t * c_{t-1} * F (1 - F)                  = dc_t * K_F
        ... of C_tilda = dc_t * I (1 - C_tilda^2)              = dc_t * K_C_tilda
        ... of O = dh * tanh(c_t) * O (1 - O)                  = dh * K_O
        dc_{t-1} = dc_t * F
    so only the products that involve dh and dc are left to each backward step. gates (T, B, 4H), the
    activated gates, becomes K = [K_I, K_F, K_C_tilda, K_O] in place; returns K, F and KC (T, B, H)."""
    T, B, four_h = gates.shape
    I, F, C_tilda, O = gates.view(T, B, 4, four_h // 4).unbind(2)
    F_kept = F.clone()
    tanh_C = torch.tanh(cs)
    KC = O * (1 - tanh_C * tanh_C)
    O.mul_(1 - O).mul_(tanh_C)  # K_O
    K_I = C_tilda * I * (1 - I)
    C_tilda.mul_(C_tilda).neg_().add_(1).mul_(I)  # K_C_tilda = I (1 - C_tilda^2)
    I.copy_(K_I)
    F.mul_(1 - F)
    F[0].mul_(c0)
    F[1:].mul_(cs[:-1])  # K_F = F (1 - F) c_{t-1}
    return gates, F_kept, KC


def cell_backward(dh: Tensor, dc: Tensor, K: Tensor, F: Tensor, KC: Tensor, d_gates: Tensor) -> None:
    """One backward step, in place: from dh (of h_t) and dc (of c_t, from the later steps), writes the
    gradient of the gate pre-activations into d_gates (B, 4H) and turns dc into the gradient of c_{t-1}."""
    B, H = dc.shape
    dc.addcmul_(dh, KC)
    torch.mul(K.view(B, 4, H)[:, :3], dc.unsqueeze(1), out=d_gates.view(B, 4, H)[:, :3])  # I, F, C_tilda
    torch.mul(K[:, 3 * H:], dh, out=d_gates[:, 3 * H:])  # O
    dc.mul_(F)


class Steps(Protocol):
    """What runs one time step; each writes into the buffers it is given (time slices of LSTMFunction's)."""

    #: whether the steps run in bfloat16 and float16 too: then autocast runs the sequence in its dtype,
    #: else the sequence stays in float32 under autocast (as autocast leaves an op it does not list)
    low_precision: bool

    def forward(self, xw: Tensor, h_prev: Tensor, c_prev: Tensor, W_h: Tensor,
                h: Tensor, c: Tensor, gates: Tensor) -> None:
        """gates <- the activated gates of xw + h_prev @ W_h; c, h <- the new state."""

    def prepare_backward(self, gates: Tensor, cs: Tensor, c0: Tensor) -> tuple[Tensor, ...]:
        """After the forward loop: the (T, ...) tensors backward reads, saved for it."""

    def backward(self, t: int, saved: tuple[Tensor, ...], dgates_next: Tensor | None, W_h: Tensor,
                 dh_out: Tensor, dc: Tensor, dgates: Tensor) -> Tensor:
        """dgates <- step t's gate gradients, from dh = dh_out + dgates_next @ W_h.T (dgates_next: step
        t+1's, None at the last step) and dc (of c_t); returns the gradient of c_{t-1}."""


class TorchSteps:
    """A step in PyTorch ops: the GEMM into the gates' buffer, then `cell_forward`; backward's factors
    for every step at once (`backward_factors`), then per step a GEMM and `cell_backward`. The forward
    math and the factors can be compiled (fused_compiled); backward's step is four ops either way."""

    low_precision = True

    def __init__(self, forward_math: Callable = cell_forward, factors_math: Callable = backward_factors):
        self.forward_math, self.factors_math = forward_math, factors_math

    def forward(self, xw, h_prev, c_prev, W_h, h, c, gates) -> None:
        torch.addmm(xw, h_prev, W_h, out=gates)  # the pre-activations, activated in place
        self.forward_math(gates, c_prev, c, h)

    def prepare_backward(self, gates, cs, c0) -> tuple[Tensor, ...]:
        return self.factors_math(gates, cs, c0)

    def backward(self, t, saved, dgates_next, W_h, dh_out, dc, dgates) -> Tensor:
        K, F, KC = saved
        dh = dh_out if dgates_next is None else torch.addmm(dh_out, dgates_next, W_h.T)
        cell_backward(dh, dc, K[t], F[t], KC[t], dgates)
        return dc


def run_steps(x: Tensor, h0: Tensor, c0: Tensor, W_x: Tensor, W_h: Tensor, b: Tensor, steps: Steps, *,
              keep_gates: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The forward loop -> outputs y, every step's c (T, B, H), and the activated gates of every step
    (T, B, 4H) when keep_gates, else of the last step only (inference needs none of them)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    xw = project_inputs(x, W_x, b)  # (T, B, 4H): every step's input GEMM and the bias, once
    y, cs = x.new_empty(T, B, H), x.new_empty(T, B, H)
    gates = torch.empty_like(xw) if keep_gates else xw.new_empty(1, B, 4 * H)
    # every step's slices, made once (T views in one call each; indexing per step costs more)
    xws, ys, css, gs = xw.unbind(0), y.unbind(0), cs.unbind(0), gates.unbind(0)
    for t in range(T):
        h_prev, c_prev = (ys[t - 1], css[t - 1]) if t else (h0, c0)
        steps.forward(xws[t], h_prev, c_prev, W_h, ys[t], css[t], gs[t if keep_gates else 0])
    return y, cs, gates


class LSTMFunction(torch.autograd.Function):
    """The whole sequence: (x, h0, c0, W_x, W_h, b, steps) -> (y, h_T, c_T), each step run by `steps`.

    Saves the input, the outputs y and what `steps.prepare_backward` makes of every step's activated
    gates and c; backward computes the gate gradients of all steps, then the weights' gradients from
    them in one GEMM each.
    """

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, W_x: Tensor, W_h: Tensor, b: Tensor, steps: Steps):
        h0, c0 = h0.contiguous(), c0.contiguous()
        y, cs, gates = run_steps(x, h0, c0, W_x, W_h, b, steps, keep_gates=True)
        c_n = cs[-1].clone()
        ctx.steps = steps
        ctx.save_for_backward(x, h0, W_x, W_h, y, *steps.prepare_backward(gates, cs, c0))
        return y, y[-1].clone(), c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor):
        x, h0, W_x, W_h, y, *saved = ctx.saved_tensors
        T, B, I = x.shape
        H = h0.shape[1]
        dy = dy.contiguous()
        dgates = x.new_empty(T, B, 4 * H)
        dc = dc_n.contiguous().clone()  # becomes the gradient of c0, step by step, in place
        dys, dgs = dy.unbind(0), dgates.unbind(0)
        for t in reversed(range(T)):
            dh_out = dys[t] + dh_n if t == T - 1 else dys[t]
            dc = ctx.steps.backward(t, saved, dgs[t + 1] if t < T - 1 else None, W_h, dh_out, dc, dgs[t])
        # The weights' gradients over all steps at once, as cuDNN computes them.
        dG = dgates.view(T * B, 4 * H)
        dW_h = torch.addmm(h0.T @ dgates[0], y[:-1].reshape((T - 1) * B, H).T, dG[B:])  # h_{t-1} of t = 0, then 1..
        dx = (dG @ W_x.T).view(T, B, I) if ctx.needs_input_grad[0] else None
        dh0 = dgates[0] @ W_h.T if ctx.needs_input_grad[1] else None
        return dx, dh0, dc, x.reshape(T * B, I).T @ dG, dW_h, dG.sum(0), None


def lstm(inputs: Tensor, H: Tensor, C: Tensor, params: list[Tensor], steps: Steps) -> tuple[Tensor, Tensor, Tensor]:
    """The fused LSTM over inputs (T, B, I), each step run by steps; -> outputs, H, C.

    Without autograd (inference, or nothing that needs a gradient) the loop runs alone and keeps no gates.
    Under torch.autocast a float32 sequence runs whole in autocast's dtype, as autocast runs a float32 GEMM,
    where the steps run in it (`Steps.low_precision`): the inputs, state and weights cast on entry (autograd
    takes the weights' gradients back to float32), autocast itself off inside, where the steps write into
    buffers of one dtype; other steps run the sequence in float32."""
    device_type = inputs.device.type
    if torch.is_autocast_enabled(device_type) and inputs.dtype == torch.float32:
        if not steps.low_precision:
            with torch.autocast(device_type, enabled=False):
                return lstm(inputs, H, C, params, steps)
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return lstm(*(t.to(dtype) for t in (inputs, H, C)), [p.to(dtype) for p in params], steps)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (inputs, H, C, *params)):
        return LSTMFunction.apply(inputs, H, C, *params, steps)
    y, cs, _ = run_steps(inputs, H.contiguous(), C.contiguous(), *params, steps, keep_gates=False)
    return y, y[-1].clone(), cs[-1].clone()
