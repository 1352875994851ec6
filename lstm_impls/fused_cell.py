"""The fused LSTM math, shared by every implementation that runs it (`fused`, `fused_compiled`).

The chapter's cell, rearranged the way fast RNN libraries arrange it:

- the four gates' weights are one matrix each: `W_x` (I, 4H) and `W_h` (H, 4H), columns in nn.LSTM's
  gate order i, f, g (the candidate memory cell, d2l's C_tilda), o; one bias `b` (4H,);
- the input projection does not depend on the state, so the inputs of all T steps go through one
  GEMM before the loop, with the bias added there, once (`project_inputs`);
- each step is then one (B, H) x (H, 4H) GEMM that adds the step's projected input (`torch.addmm`),
  and the pointwise math on the four chunks of its result (`lstm_cell`).

Plain functions that TorchScript and torch.compile accept: `fused` runs them eagerly, `fused_compiled`
runs `lstm_cell` under torch.compile.
"""

import torch
from torch import Tensor

# Parameter names and order: the gates' weights concatenated, one bias.
PARAM_NAMES = ("W_x", "W_h", "b")


def project_inputs(inputs: Tensor, W_x: Tensor, b: Tensor) -> Tensor:
    """The input projection of every time step of inputs (T, B, I), bias included: one GEMM -> (T, B, 4H)."""
    T, B, I = inputs.shape
    return torch.addmm(b, inputs.reshape(T * B, I), W_x).view(T, B, -1)


def lstm_cell(XW: Tensor, H: Tensor, C: Tensor, W_h: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM time step from the step's projected input XW (B, 4H) and state H, C (B, H)."""
    gates = torch.addmm(XW, H, W_h)  # XW + H @ W_h: all four gates in one GEMM
    I, F, C_tilda, O = gates.chunk(4, 1)
    I, F, C_tilda, O = torch.sigmoid(I), torch.sigmoid(F), torch.tanh(C_tilda), torch.sigmoid(O)
    C = F * C + I * C_tilda
    H = O * torch.tanh(C)
    return H, C


def lstm(inputs: Tensor, H: Tensor, C: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The fused LSTM over inputs (T, B, I): one GEMM for every step's input, then the loop; -> outputs, H, C."""
    W_x, W_h, b = params
    outputs: list[Tensor] = []
    for XW in project_inputs(inputs, W_x, b):
        H, C = lstm_cell(XW, H, C, W_h)
        outputs.append(H)
    return torch.stack(outputs), H, C
