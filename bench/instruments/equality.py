"""Proof of equality: an implementation against nn.LSTM in float64, outputs and every gradient."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_impls

LSTM_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.LSTM's layout, as load_lstm_weights takes it


def _forward_backward(call, x: Tensor, h0: Tensor, c0: Tensor, dtype: torch.dtype, device,
                      amp: torch.dtype | None = None) -> dict[str, Tensor]:
    """Forward from a non-zero initial state (under autocast in amp, when given), then backward of a fixed
    random linear functional of y, h, c."""
    x, h0, c0 = (t.detach().to(device, dtype).requires_grad_() for t in (x, h0, c0))
    with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
        y, (h, c) = call(x, (h0, c0))
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) for t in (y, h, c)]
    sum((t * w).sum() for t, w in zip((y, h, c), cotangents)).backward()
    return {"y": y, "h": h, "c": c, "x.grad": x.grad, "h0.grad": h0.grad, "c0.grad": c0.grad}


def max_abs_errors(name: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int,
                   **options) -> dict[str, float]:
    """Max abs difference of every tensor `against_nn_lstm` compares (its keywords), in float32 by default."""
    want, got = against_nn_lstm(name, seq_len, batch_size, input_size, hidden_size, **options)
    return {key: abs_diff(got[key], expected).max().item() for key, expected in want.items()}


def abs_diff(got: Tensor, want: Tensor) -> Tensor:
    """|got - want| elementwise, in float64 on the CPU (want: nn.LSTM's float64 tensor)."""
    return (got.detach().cpu().double() - want).abs()


def against_nn_lstm(name: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int, *,
                    num_layers: int = 1, bidirectional: bool = False, proj_size: int = 0, batch_first: bool = False,
                    device="cpu", scale: float | None = None, seed: int = 0, lengths: list[int] | None = None,
                    dtype: torch.dtype = torch.float32, amp: torch.dtype | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """y, h, c and the gradients wrt x, h0, c0 and every weight of nn.LSTM in float64 (ATen's native CPU
    kernels) and of `name` with the same configuration and weights, in dtype (under autocast in amp, when
    given: the weights then in dtype, float32): (nn.LSTM's, name's), with the same keys and shapes.

    Keys: "y", "h", "c", "x.grad", "h0.grad", "c0.grad", and "<nn.LSTM's parameter name>.grad" for
    every weight ("weight_ih_l0.grad", "weight_hr_l1_reverse.grad", ...; with one layer in one
    direction without the "_l0": "weight_ih.grad", as `load_lstm_weights` names them). The state passed and
    compared has the shape `name` takes for this configuration: (B, H) for one layer in one direction
    (as the chapter's callers pass it), nn.LSTM's (layers * directions, B, H) otherwise. Dropout is 0.

    Weights are normal with std `scale`, by default nn.LSTM's own init scale 1/sqrt(hidden_size):
    much larger weights make a long sequence chaotic, and then no two float orders agree. The cotangents
    of backward are cast to each output's dtype (under autocast the outputs may be in amp's).

    With `lengths` (one per sequence, at most seq_len, in any order) both take x packed
    (pack_padded_sequence, enforce_sorted=False): "y" is then the packed outputs, the valid positions only,
    "h" and "c" each sequence's state at its own length, and "x.grad" is zero at the padding on both sides.
    """
    T, B, I, H = seq_len, batch_size, input_size, hidden_size
    config = {"num_layers": num_layers, "bidirectional": bidirectional, "proj_size": proj_size,
              "batch_first": batch_first}
    scale = H**-0.5 if scale is None else scale
    g = torch.Generator().manual_seed(seed)
    ref = nn.LSTM(I, H, dtype=torch.float64, **config)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    k, h_out = num_layers * (2 if bidirectional else 1), proj_size or H
    stacked = k > 1
    lead = (k,) if stacked else ()
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    h0 = torch.randn((*lead, B, h_out), generator=g, dtype=torch.float64)
    c0 = torch.randn((*lead, B, H), generator=g, dtype=torch.float64)

    def packed(lstm):
        """lstm on x packed at lengths, its packed outputs' data as y."""
        def call(x: Tensor, state: tuple[Tensor, Tensor]):
            if lengths is None:
                return lstm(x, state)
            y, state = lstm(pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                                 enforce_sorted=False), state)
            return y.data, state
        return call

    def call_ref(x: Tensor, state: tuple[Tensor, Tensor]):
        if stacked:
            return ref(x, state)
        y, (h, c) = ref(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return y, (h[0], c[0])

    want = _forward_backward(packed(call_ref), x, h0, c0, torch.float64, "cpu")
    want.update({f"{key}.grad": p.grad for key, p in ref.named_parameters()})

    impl = lstm_impls.create(name, I, H, device=device, dtype=dtype, **config)
    impl.load_nn_lstm(ref)  # the same weights, rounded to dtype as they are copied
    got = _forward_backward(packed(impl), x, h0, c0, dtype, device, amp)
    got.update({f"{key}.grad": t for key, t in impl.named_lstm_weights(grad=True).items()})
    if not stacked:  # one layer, one direction: the chapter's names, as load_lstm_weights takes them
        want, got = ({key.replace("_l0.", "."): t for key, t in d.items()} for d in (want, got))

    for key, expected in want.items():
        if key not in got:
            raise ValueError(f"{name}: no {key}")
        if tuple(got[key].shape) != tuple(expected.shape):
            raise ValueError(f"{name}: {key} has shape {tuple(got[key].shape)}, nn.LSTM's is {tuple(expected.shape)}")
    return want, got
