"""The fused LSTM in plain PyTorch: concatenated gate weights, the input projection hoisted out of the loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import fused_cell
from .base import LSTMImpl, State


class FusedLSTM(LSTMImpl):
    """One GEMM for all inputs before the loop, one (B, H) x (H, 4H) GEMM per step, the pointwise math eager.

    Parameters `W_x` (I, 4H), `W_h` (H, 4H) and `b` (4H,) hold nn.LSTM's weights transposed, gates
    in nn.LSTM's order (i, f, g, o), and its two biases summed.
    """

    description = ("fused LSTM: gate weights concatenated, input GEMM hoisted out of the loop, weight gradients "
                   "in one GEMM over all steps, eager")

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        self.steps = self.make_steps()
        four_h = 4 * hidden_size
        for name, shape in (("W_x", (input_size, four_h)), ("W_h", (hidden_size, four_h)), ("b", (four_h,))):
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))

    def params(self) -> list[Tensor]:
        return [getattr(self, name) for name in fused_cell.PARAM_NAMES]

    def make_steps(self) -> fused_cell.Steps:
        """What runs a time step: the cell's math as written; subclasses change only this."""
        return fused_cell.TorchSteps()

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return fused_cell.lstm(inputs, H, C, self.params(), self.steps)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        H, C = self.zero_state(x.shape[1], x) if state is None else state
        y, H, C = self.run(x, H, C)
        return y, (H, C)

    @torch.no_grad()
    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor) -> None:
        self.check_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh)
        self.W_x.copy_(weight_ih.T)
        self.W_h.copy_(weight_hh.T)
        self.b.copy_(bias_ih + bias_hh)  # one bias; nn.LSTM adds its two

    def lstm_weights(self, grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        W_x, W_h, b = ((p.grad if grad else p.detach()) for p in self.params())
        # The gradient of the one bias is the gradient of each of nn.LSTM's two; the bias itself
        # splits as (b, 0), which nn.LSTM sums back to b.
        return W_x.T.clone(), W_h.T.clone(), b.clone(), (b.clone() if grad else torch.zeros_like(b))
