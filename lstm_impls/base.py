"""The protocol every LSTM implementation follows."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

State = tuple[Tensor, Tensor]

FLOATS = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


class Unsupported(ValueError):
    """The implementation cannot run on this device or in this dtype."""


class LSTMImpl(nn.Module):
    """A single-layer LSTM, time-major: `module(x, state=None) -> (y, (h, c))`.

    x is (T, B, input_size); state is None (zeros) or (h, c), each (B, hidden_size);
    y is (T, B, hidden_size). Subclasses set `description` and `dtypes` (per device type)
    and implement `forward`, `load_lstm_weights` and `lstm_weights`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: what runs it: "eager", "torchscript" or "inductor". The suite starts each runtime its grid
    #: uses once before the first cell, so no cell's first-call cost includes the process's start-up.
    runtime: ClassVar[str] = "eager"
    #: device type ("cpu", "cuda") -> dtypes this implementation runs in there.
    dtypes: ClassVar[dict[str, frozenset[torch.dtype]]] = {"cpu": FLOATS, "cuda": FLOATS}

    def __init__(self, input_size: int, hidden_size: int, *, device="cpu", dtype=torch.float32):
        super().__init__()
        for what, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ValueError(f"{what} must be a positive int, got {size!r}")
        reason = self.unsupported_reason(device, dtype)
        if reason:
            raise Unsupported(reason)
        self.input_size = input_size
        self.hidden_size = hidden_size

    @classmethod
    def unsupported_reason(cls, device: str | torch.device, dtype: torch.dtype) -> str | None:
        """Why this implementation cannot run on device in dtype, or None when it can."""
        device_type = torch.device(device).type
        if device_type not in cls.dtypes:
            return f"{cls.name or cls.__name__} does not run on {device_type} (runs on {', '.join(sorted(cls.dtypes))})"
        if dtype not in cls.dtypes[device_type]:
            known = ", ".join(sorted(str(d).removeprefix("torch.") for d in cls.dtypes[device_type]))
            return f"{cls.name or cls.__name__} does not run in {dtype} on {device_type} (supports {known})"
        return None

    def describe(self) -> str:
        """One line for reports; may depend on the device the module lives on."""
        return self.description

    def zero_state(self, batch_size: int, like: Tensor) -> State:
        h = torch.zeros(batch_size, self.hidden_size, device=like.device, dtype=like.dtype)
        return h, h.clone()

    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor) -> None:
        """Copy weights given in nn.LSTM's layout: gates i, f, g, o; (4H, I), (4H, H), (4H,), (4H,)."""
        raise NotImplementedError

    def lstm_weights(self, grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The weights (or, with grad=True, their gradients) in nn.LSTM's layout, as new tensors."""
        raise NotImplementedError

    def check_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor) -> None:
        """Raise ValueError unless the four tensors have nn.LSTM's shapes for this module."""
        four_h, i, h = 4 * self.hidden_size, self.input_size, self.hidden_size
        want = {"weight_ih": (four_h, i), "weight_hh": (four_h, h), "bias_ih": (four_h,), "bias_hh": (four_h,)}
        got = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih, "bias_hh": bias_hh}
        for key, shape in want.items():
            if tuple(got[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(got[key].shape)}")
