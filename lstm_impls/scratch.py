"""The LSTM from scratch, as the d2l chapter writes it: 12 parameter tensors and a Python loop.

Deep and bidirectional as the book's later sections build them (`LSTMImpl.forward_stacked`): one
set of the chapter's 12 tensors per layer and direction, named like nn.LSTM's (`W_xi` for layer 0's
forward direction as in the chapter, `W_xi_l1`, `W_xi_l0_reverse`, ... for the others), and with
`proj_size` a 13th, `W_hr` (H, P), nn.LSTM's projection in the chapter's (in, out) orientation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cell
from .base import LSTMImpl


def param_suffix(layer: int, direction: int) -> str:
    """The suffix of a layer's and direction's parameter names: none for the chapter's own (layer 0,
    forward), nn.LSTM's otherwise ("_l1", "_l0_reverse")."""
    if layer == 0 and direction == 0:
        return ""
    return f"_l{layer}" + ("_reverse" if direction else "")


class ScratchLSTM(LSTMImpl):
    """d2l's `lstm`: one matmul per gate and input, a Python loop over time steps, run eagerly."""

    description = "d2l scratch LSTM: 12 tensors, per-gate matmuls, Python loop, eager"
    supports = frozenset({"num_layers", "bidirectional", "proj_size", "batch_first", "dropout"})

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32, **config):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)
        h_out = self.output_size
        for layer, direction in self.layers_and_directions():
            n_in, end = self.layer_input_size(layer), param_suffix(layer, direction)
            for name in cell.PARAM_NAMES:
                shape = (hidden_size,) if name.startswith("b_") else (
                    (n_in if name.startswith("W_x") else h_out), hidden_size)
                self.register_parameter(name + end, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))
            if self.proj_size:
                self.register_parameter("W_hr" + end, nn.Parameter(
                    torch.zeros(hidden_size, self.proj_size, device=device, dtype=dtype)))

    def params(self, layer: int = 0, direction: int = 0) -> list[Tensor]:
        """The chapter's 12 tensors of one layer and direction, in cell.PARAM_NAMES' order."""
        end = param_suffix(layer, direction)
        return [getattr(self, name + end) for name in cell.PARAM_NAMES]

    def projection(self, layer: int = 0, direction: int = 0) -> Tensor:
        """W_hr (H, P) of one layer and direction (only with proj_size)."""
        return getattr(self, "W_hr" + param_suffix(layer, direction))

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        """The loop itself; subclasses change only how it runs."""
        if self.proj_size:
            return cell.lstmp(inputs, H, C, self.params(layer, direction), self.projection(layer, direction))
        return cell.lstm(inputs, H, C, self.params(layer, direction))

    # nn.LSTM stacks the gates i, f, g (our c), o in rows; we keep them in d2l's (I, H) orientation.
    _GATES = ("i", "f", "c", "o")

    @torch.no_grad()
    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                          weight_hr: Tensor | None = None, *, layer: int = 0, direction: int = 0) -> None:
        self.check_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, layer)
        end = param_suffix(layer, direction)
        bias = bias_ih + bias_hh  # d2l has one bias per gate; nn.LSTM adds its two.
        for k, gate in enumerate(self._GATES):
            rows = slice(k * self.hidden_size, (k + 1) * self.hidden_size)
            getattr(self, f"W_x{gate}{end}").copy_(weight_ih[rows].T)
            getattr(self, f"W_h{gate}{end}").copy_(weight_hh[rows].T)
            getattr(self, f"b_{gate}{end}").copy_(bias[rows])
        if weight_hr is not None:
            self.projection(layer, direction).copy_(weight_hr.T)

    def lstm_weights(self, grad: bool = False, *, layer: int = 0, direction: int = 0) -> tuple[Tensor, ...]:
        end = param_suffix(layer, direction)

        def get(name: str) -> Tensor:
            p = getattr(self, name + end)
            return p.grad if grad else p.detach()

        weight_ih = torch.cat([get(f"W_x{g}").T for g in self._GATES])
        weight_hh = torch.cat([get(f"W_h{g}").T for g in self._GATES])
        bias = torch.cat([get(f"b_{g}") for g in self._GATES])
        # The gradient of one shared bias is the gradient of each of nn.LSTM's two; the
        # weights themselves split as (bias, 0), which nn.LSTM sums back to the same bias.
        weights = (weight_ih, weight_hh, bias, (bias.clone() if grad else torch.zeros_like(bias)))
        return weights + ((get("W_hr").T.clone(),) if self.proj_size else ())
