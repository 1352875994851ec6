"""Proof of equality: an implementation against nn.LSTM in float64, outputs and every gradient."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import lstm_impls

LSTM_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.LSTM's layout, as load_lstm_weights takes it


def _forward_backward(call, x: Tensor, h0: Tensor, c0: Tensor, dtype: torch.dtype, device) -> dict[str, Tensor]:
    """Forward from a non-zero initial state, then backward of a fixed random linear functional of y, h, c."""
    x, h0, c0 = (t.detach().to(device, dtype).requires_grad_() for t in (x, h0, c0))
    y, (h, c) = call(x, (h0, c0))
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device, dtype) for t in (y, h, c)]
    sum((t * w).sum() for t, w in zip((y, h, c), cotangents)).backward()
    return {"y": y, "h": h, "c": c, "x.grad": x.grad, "h0.grad": h0.grad, "c0.grad": c0.grad}


def max_abs_errors(name: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int, *,
                   device="cpu", scale: float | None = None, seed: int = 0) -> dict[str, float]:
    """Max abs difference of y, h, c and the gradients wrt x, h0, c0 and every weight (in nn.LSTM's
    layout) between `name` in float32 and nn.LSTM in float64 (ATen's native CPU kernels), same weights.

    Weights are normal with std `scale`, by default nn.LSTM's own init scale 1/sqrt(hidden_size):
    much larger weights make a long sequence chaotic, and then no two float orders agree.
    """
    T, B, I, H = seq_len, batch_size, input_size, hidden_size
    scale = H**-0.5 if scale is None else scale
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) * scale
               for shape in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    x, h0, c0 = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((T, B, I), (B, H), (B, H)))

    ref = nn.LSTM(I, H, dtype=torch.float64)
    ref_params = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    with torch.no_grad():
        for p, w in zip(ref_params, weights):
            p.copy_(w)

    def call_ref(x: Tensor, state: tuple[Tensor, Tensor]):
        y, (h, c) = ref(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return y, (h[0], c[0])

    want = _forward_backward(call_ref, x, h0, c0, torch.float64, "cpu")
    want.update({f"{k}.grad": p.grad for k, p in zip(LSTM_WEIGHTS, ref_params)})

    impl = lstm_impls.create(name, I, H, device=device)
    impl.load_lstm_weights(*(w.to(device, torch.float32) for w in weights))
    got = _forward_backward(impl, x, h0, c0, torch.float32, device)
    got.update({f"{k}.grad": t for k, t in zip(LSTM_WEIGHTS, impl.lstm_weights(grad=True))})

    errors = {}
    for key, expected in want.items():
        if tuple(got[key].shape) != tuple(expected.shape):
            raise ValueError(f"{name}: {key} has shape {tuple(got[key].shape)}, nn.LSTM's is {tuple(expected.shape)}")
        errors[key] = (got[key].detach().cpu().double() - expected).abs().max().item()
    return errors
