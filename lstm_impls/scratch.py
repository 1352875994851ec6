"""The LSTM from scratch, as the d2l chapter writes it: 12 parameter tensors and a Python loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cell
from .base import LSTMImpl, State


class ScratchLSTM(LSTMImpl):
    """d2l's `lstm`: one matmul per gate and input, a Python loop over time steps, run eagerly."""

    description = "d2l scratch LSTM: 12 tensors, per-gate matmuls, Python loop, eager"

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        for name in cell.PARAM_NAMES:
            shape = (hidden_size,) if name.startswith("b_") else (
                (input_size if name.startswith("W_x") else hidden_size), hidden_size)
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))

    def params(self) -> list[Tensor]:
        return [getattr(self, name) for name in cell.PARAM_NAMES]

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The loop itself; subclasses change only how it runs."""
        return cell.lstm(inputs, H, C, self.params())

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        H, C = self.zero_state(x.shape[1], x) if state is None else state
        y, H, C = self.run(x, H, C)
        return y, (H, C)

    # nn.LSTM stacks the gates i, f, g (our c), o in rows; we keep them in d2l's (I, H) orientation.
    _GATES = ("i", "f", "c", "o")

    @torch.no_grad()
    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor) -> None:
        self.check_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh)
        bias = bias_ih + bias_hh  # d2l has one bias per gate; nn.LSTM adds its two.
        for k, gate in enumerate(self._GATES):
            rows = slice(k * self.hidden_size, (k + 1) * self.hidden_size)
            getattr(self, f"W_x{gate}").copy_(weight_ih[rows].T)
            getattr(self, f"W_h{gate}").copy_(weight_hh[rows].T)
            getattr(self, f"b_{gate}").copy_(bias[rows])

    def lstm_weights(self, grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        def get(name: str) -> Tensor:
            p = getattr(self, name)
            return p.grad if grad else p.detach()

        weight_ih = torch.cat([get(f"W_x{g}").T for g in self._GATES])
        weight_hh = torch.cat([get(f"W_h{g}").T for g in self._GATES])
        bias = torch.cat([get(f"b_{g}") for g in self._GATES])
        # The gradient of one shared bias is the gradient of each of nn.LSTM's two; the
        # weights themselves split as (bias, 0), which nn.LSTM sums back to the same bias.
        return weight_ih, weight_hh, bias, (bias.clone() if grad else torch.zeros_like(bias))
