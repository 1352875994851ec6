"""The LSTM math of the d2l chapter, shared by every implementation that runs it.

`lstm_cell` is one time step, written as the chapter writes it: one matmul per gate and input.
`lstm` is the chapter's Python loop over time steps. Both are plain functions that TorchScript
can compile, so `scratch` runs them eagerly, `scripted` runs them under `torch.jit.script` and
`compiled` under `torch.compile`: the implementations differ only in how the same code runs.
`lstmp_cell` and `lstmp` are the same with nn.LSTM's projection (`proj_size`, LSTMP): the cell's
output O * tanh(C) times W_hr (H, P) is the new H, so the W_h* weights are (P, H).
"""

import torch
from torch import Tensor

# Parameter names and order, as in the d2l chapter (`get_lstm_params`), without the output layer.
PARAM_NAMES = (
    "W_xi", "W_hi", "b_i",  # input gate
    "W_xf", "W_hf", "b_f",  # forget gate
    "W_xo", "W_ho", "b_o",  # output gate
    "W_xc", "W_hc", "b_c",  # candidate memory cell
)  # fmt: skip

def lstm_cell(X: Tensor, H: Tensor, C: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """One LSTM time step on X (B, I) with state H, C (B, H)."""
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c = params
    I = torch.sigmoid((X @ W_xi) + (H @ W_hi) + b_i)
    F = torch.sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
    O = torch.sigmoid((X @ W_xo) + (H @ W_ho) + b_o)
    C_tilda = torch.tanh((X @ W_xc) + (H @ W_hc) + b_c)
    C = F * C + I * C_tilda
    H = O * torch.tanh(C)
    return H, C

def lstm(inputs: Tensor, H: Tensor, C: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's loop over time steps of inputs (T, B, I); returns outputs (T, B, H), H, C."""
    outputs: list[Tensor] = []
    for X in inputs:
        H, C = lstm_cell(X, H, C, params)
        outputs.append(H)
    return torch.stack(outputs), H, C

def lstmp_cell(X: Tensor, H: Tensor, C: Tensor, params: list[Tensor], W_hr: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTMP time step (nn.LSTM's proj_size): the chapter's cell, its H projected, H = (O * tanh(C)) @ W_hr."""
    H, C = lstm_cell(X, H, C, params)
    return H @ W_hr, C

def lstmp(inputs: Tensor, H: Tensor, C: Tensor, params: list[Tensor], W_hr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's loop with the projected cell; returns outputs (T, B, P), H, C."""
    outputs: list[Tensor] = []
    for X in inputs:
        H, C = lstmp_cell(X, H, C, params, W_hr)
        outputs.append(H)
    return torch.stack(outputs), H, C
