"""How each implementation's error against a float64 nn.LSTM grows along the sequence, per precision.

`lstm-bench check --accuracy`: for each implementation, precision (bench.grid.PRECISIONS: a native
dtype, or float32 weights under torch.autocast) and sequence length, the same weights, input and
initial state go through nn.LSTM in float64 and through the implementation (bench/instruments/equality.py),
and every output and gradient is compared.

Relative error is normwise, per tensor, so values near zero do not blow it up: the max is
max|got - want| / max|want|, the mean is mean|got - want| / mean|want|; a row's outputs figure is the
worst of y, h and c, its gradients figure the worst of the input's, the initial state's and every weight's.
"""

from __future__ import annotations

import torch
from torch import Tensor

import lstm_impls

from ..grid import DTYPES
from .equality import abs_diff, against_nn_lstm

OUTPUTS = ("y", "h", "c")


def precision_dtypes(precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """A precision's (parameter dtype, autocast dtype or None): "bfloat16" is native, "autocast-bfloat16"
    float32 weights under autocast."""
    amp = precision.removeprefix("autocast-")
    if amp != precision:
        return torch.float32, DTYPES[amp]
    return DTYPES[precision], None


def relative(got: Tensor, want: Tensor) -> tuple[float, float]:
    """(max, mean) normwise relative error of got against want (see the module docstring)."""
    diff = abs_diff(got, want)
    scale_max, scale_mean = want.abs().max().item(), want.abs().mean().item()
    return (diff.max().item() / scale_max if scale_max else diff.max().item(),
            diff.mean().item() / scale_mean if scale_mean else diff.mean().item())


def accuracy_row(name: str, precision: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int,
                 device: str = "cpu", seed: int = 0) -> dict:
    """One row of accuracy.csv (bench.grid.ACCURACY_COLUMNS): status "unsupported" with the implementation's
    reason where it does not run the precision, "error" with the message where it fails."""
    dtype, amp = precision_dtypes(precision)
    row = {"impl": name, "precision": precision, "device": device, "seq_len": seq_len, "batch_size": batch_size,
           "input_size": input_size, "hidden_size": hidden_size}
    reason = lstm_impls.get(name).unsupported_reason(device, dtype)
    if reason:
        return row | {"status": "unsupported", "error": reason}
    try:
        want, got = against_nn_lstm(name, seq_len, batch_size, input_size, hidden_size, device=device, seed=seed,
                                    dtype=dtype, amp=amp)
    except RuntimeError as exc:  # e.g. oneDNN has no float16 LSTM on this CPU
        return row | {"status": "error", "error": str(exc).strip().splitlines()[0]}
    errors = {key: relative(got[key], expected) for key, expected in want.items()}
    grads = [key for key in errors if key not in OUTPUTS]
    worst = max(errors, key=lambda key: errors[key][0])
    return row | {
        "status": "ok", "error": None,
        "outputs_max_rel": max(errors[k][0] for k in OUTPUTS), "outputs_mean_rel": max(errors[k][1] for k in OUTPUTS),
        "grads_max_rel": max(errors[k][0] for k in grads), "grads_mean_rel": max(errors[k][1] for k in grads),
        "worst": worst}
