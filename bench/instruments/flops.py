"""FLOPs of one step: analytic (the matmuls the math needs) and counted by FlopCounterMode.

Only matrix products count (multiply and add = 2 FLOPs), the convention of DeepBench and of
FlopCounterMode; the element-wise gate math is O(T*B*H), negligible next to O(T*B*H*(I+H)).
FlopCounterMode knows no formula for the fused RNN ops, so nn.LSTM would count as 0: we register
formulas for oneDNN's `mkldnn_rnn_layer` and cuDNN's `_cudnn_rnn`, forward and backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

aten = torch.ops.aten


def lstm_flops(seq_len: int, batch_size: int, input_size: int, hidden_size: int) -> int:
    """Forward matmul FLOPs of a one-layer LSTM: 4 gates, each X @ W_x and H @ W_h per time step."""
    return 2 * seq_len * batch_size * 4 * hidden_size * (input_size + hidden_size)


def step_flops(mode: str, seq_len: int, batch_size: int, vocab_size: int, hidden_size: int, *,
               num_layers: int = 1, bidirectional: bool = False, proj_size: int = 0, **_layout) -> int:
    """Matmul FLOPs of one d2l step: LSTM plus the output Linear, and for "train" their backward.

    Backward computes each weight gradient (as much work as the forward) and the gradient flowing
    into H (H @ W_h^T, for every step but the first, whose state is detached), into each layer's input
    but the one-hot input's (which needs none), and into the LSTM's output (through the Linear). Each
    layer and direction is an LSTM reading the layer below's outputs (both directions'); with
    proj_size, h = W_hr (o * tanh c) adds a (H, P) product per step and the recurrence reads P.
    `**_layout` takes batch_first and dropout, which change no matmul.
    """
    T, B, V, H = seq_len, batch_size, vocab_size, hidden_size
    D, out = (2 if bidirectional else 1), (proj_size or hidden_size)
    forward, input_grads = 2 * T * B * D * out * V, 2 * T * B * V * D * out  # the Linear, and its gradient
    for layer in range(num_layers):
        n_in = V if layer == 0 else D * out
        per_direction = 2 * T * B * 4 * H * (n_in + out) + 2 * T * B * H * proj_size
        forward += D * per_direction
        input_grads += D * (2 * (T - 1) * B * 4 * H * out + 2 * T * B * H * proj_size)  # into h, through W_hr
        if layer:
            input_grads += D * 2 * T * B * 4 * H * n_in  # into the layer below's outputs
    if mode == "forward":
        return forward
    return forward + forward + input_grads  # + the weight gradients, as much work as the forward


def cell_flops(cell, mode: str, real_tokens: int) -> int:
    """step_flops of a grid cell (a bench.grid.Cell) in mode, scaled to the real tokens a step computes: every
    GEMM of the step scales with the tokens it reads, and a packed batch computes its real ones only (for a
    data-parallel step, every rank's real tokens)."""
    flops = step_flops(mode, cell.seq_len, cell.batch_size, cell.vocab_size, cell.hidden_size, **cell.config)
    return round(flops * real_tokens / cell.padded_tokens)


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs FlopCounterMode counts while step() runs (it runs torch.compile'd code eagerly)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _rnn_flops(input_shape, hidden_size: int) -> int:
    """One layer's LSTM FLOPs over its input: (T, B, I), or a packed batch's data (tokens, I)."""
    *steps, I = input_shape
    return lstm_flops(1, math.prod(steps), I, hidden_size)  # the count is linear in T * B


@register_flop_formula(aten.mkldnn_rnn_layer, get_raw=True)
def _mkldnn_rnn_layer_flops(input, w0, w1, w2, w3, hx, cx, reverse, batch_sizes, mode, hidden_size,
                            *args, out_val=None, **kwargs) -> int:
    return _rnn_flops(input.shape, hidden_size)


@register_flop_formula(aten.mkldnn_rnn_layer_backward, get_raw=True)
def _mkldnn_rnn_layer_backward_flops(input, w1, w2, w3, w4, hx, cx, output, hy, cy, grad_output, grad_hy,
                                     grad_cy, reverse, mode, hidden_size, *args, out_val=None, **kwargs) -> int:
    return 2 * _rnn_flops(input.shape, hidden_size)  # gradients for the weights and for the inputs


@register_flop_formula(aten._cudnn_rnn, get_raw=True)
def _cudnn_rnn_flops(input, weight, weight_stride0, weight_buf, hx, cx, mode, hidden_size,
                     *args, out_val=None, **kwargs) -> int:
    return _rnn_flops(input.shape, hidden_size)


@register_flop_formula(aten._cudnn_rnn_backward, get_raw=True)
def _cudnn_rnn_backward_flops(input, weight, weight_stride0, weight_buf, hx, cx, output, grad_output,
                              grad_hy, grad_cy, mode, hidden_size, *args, out_val=None, **kwargs) -> int:
    return 2 * _rnn_flops(input.shape, hidden_size)
