"""`torch.nn.LSTM`: cuDNN on CUDA; oneDNN (mkldnn_rnn) or ATen's native kernels on CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LSTMImpl, State, suffix


class CudnnLSTM(LSTMImpl):
    """The framework's fused LSTM: every configuration keyword goes to nn.LSTM as it is."""

    description = "torch.nn.LSTM"
    supports = frozenset({"num_layers", "bidirectional", "proj_size", "batch_first", "dropout"})

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32, **config):
        super().__init__(input_size, hidden_size, device=device, dtype=dtype, **config)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=self.num_layers, bidirectional=self.bidirectional,
                            proj_size=self.proj_size, batch_first=self.batch_first, dropout=self.dropout,
                            device=device, dtype=dtype)

    def describe(self) -> str:
        """nn.LSTM, and on CUDA whether its weights are one flat buffer (else cuDNN gets a copy every call).

        Which kernel library runs on a CPU (oneDNN or ATen's native kernels) depends on the dtype and
        on what the CPU supports natively; the suite reads it from a profiled step.
        """
        weight = self.lstm.weight_ih_l0
        if weight.device.type != "cuda":
            return self.description
        if len({w.untyped_storage().data_ptr() for w in self.lstm._flat_weights}) == 1:
            return f"{self.description} (cuDNN {torch.backends.cudnn.version()}, flattened weights)"
        return (f"{self.description} (cuDNN {torch.backends.cudnn.version()}, weights not flattened in "
                f"{str(weight.dtype).removeprefix('torch.')}: copied into a new buffer every call)")

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if self.stacked_state(state):  # nn.LSTM's own (num_layers * directions, B, H) state
            return self.lstm(x, state)
        hx = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        y, (h, c) = self.lstm(x, hx)
        return y, (h[0], c[0])

    @torch.no_grad()
    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                          weight_hr: Tensor | None = None, *, layer: int = 0, direction: int = 0) -> None:
        self.check_lstm_weights(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, layer)
        values = (weight_ih, weight_hh, bias_ih, bias_hh) + ((weight_hr,) if weight_hr is not None else ())
        for name, value in zip(self.weight_shapes(layer), values):
            getattr(self.lstm, name + suffix(layer, direction)).copy_(value)

    def lstm_weights(self, grad: bool = False, *, layer: int = 0, direction: int = 0) -> tuple[Tensor, ...]:
        tensors = [getattr(self.lstm, name + suffix(layer, direction)) for name in self.weight_shapes(layer)]
        return tuple((t.grad if grad else t.detach()).clone() for t in tensors)
