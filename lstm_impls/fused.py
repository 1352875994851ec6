"""The fused LSTM in plain PyTorch: concatenated gate weights, the input projection hoisted out of the loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import fused_cell
from .base import LSTMImpl
from .scratch import param_suffix


class FusedLSTM(LSTMImpl):
    """One GEMM for all inputs before the loop, one (B, H) x (H, 4H) GEMM per step, the pointwise math eager.

    Parameters `W_x` (I, 4H), `W_h` (H, 4H) and `b` (4H,) hold nn.LSTM's weights transposed, gates
    in nn.LSTM's order (i, f, g, o), and its two biases summed. Deep and bidirectional: one such
    set per layer and direction (`W_x_l1`, `W_h_l0_reverse`, ...; layer 0's forward keeps the plain
    names), each running the fused sequence, stacked by `LSTMImpl.forward_stacked`. No projection:
    `LSTMFunction`'s backward has none.
    """

    description = ("fused LSTM: gate weights concatenated, input GEMM hoisted out of the loop, weight gradients "
                   "in one GEMM over all steps, eager")
    supports = frozenset({"num_layers", "bidirectional", "batch_first", "dropout"})

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32, **config):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)
        self.steps = self.make_steps()
        four_h = 4 * hidden_size
        for layer, direction in self.layers_and_directions():
            end = param_suffix(layer, direction)
            for name, shape in (("W_x", (self.layer_input_size(layer), four_h)), ("W_h", (hidden_size, four_h)),
                                ("b", (four_h,))):
                self.register_parameter(name + end, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))

    def params(self, layer: int = 0, direction: int = 0) -> list[Tensor]:
        end = param_suffix(layer, direction)
        return [getattr(self, name + end) for name in fused_cell.PARAM_NAMES]

    def make_steps(self) -> fused_cell.Steps:
        """What runs a time step: the cell's math as written; subclasses change only this."""
        return fused_cell.TorchSteps()

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        return fused_cell.lstm(inputs, H, C, self.params(layer, direction), self.steps)

    @torch.no_grad()
    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                          weight_hr: Tensor | None = None, *, layer: int = 0, direction: int = 0) -> None:
        self.check_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, layer)
        W_x, W_h, b = self.params(layer, direction)
        W_x.copy_(weight_ih.T)
        W_h.copy_(weight_hh.T)
        b.copy_(bias_ih + bias_hh)  # one bias; nn.LSTM adds its two

    def lstm_weights(self, grad: bool = False, *, layer: int = 0, direction: int = 0) -> tuple[Tensor, ...]:
        W_x, W_h, b = ((p.grad if grad else p.detach()) for p in self.params(layer, direction))
        # The gradient of the one bias is the gradient of each of nn.LSTM's two; the bias itself
        # splits as (b, 0), which nn.LSTM sums back to b.
        return W_x.T.clone(), W_h.T.clone(), b.clone(), (b.clone() if grad else torch.zeros_like(b))
