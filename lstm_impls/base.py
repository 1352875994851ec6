"""The protocol every LSTM implementation follows, and the stacking of layers and directions they share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

State = tuple[Tensor, Tensor]

FLOATS = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})

#: nn.LSTM's configuration keywords beyond the sizes, with their defaults (the single-layer LSTM of the chapter).
CONFIG_DEFAULTS: dict[str, object] = {"num_layers": 1, "bidirectional": False, "proj_size": 0, "batch_first": False,
                                      "dropout": 0.0}


_reusing_compiled = False


@contextlib.contextmanager
def reuse_compiled() -> Iterator[None]:
    """Within it, a new module may run what an earlier module of this process compiled (TorchScript's optimized
    plan), instead of compiling afresh. For callers that do not report the first calls' cost: a timing-only worker
    of `lstm-bench run` otherwise paid TorchScript's ~10 s of optimizing passes again in every scripted cell."""
    global _reusing_compiled
    before, _reusing_compiled = _reusing_compiled, True
    try:
        yield
    finally:
        _reusing_compiled = before


def reusing_compiled() -> bool:
    """Whether a `reuse_compiled()` is open: implementations that compile read it when they do."""
    return _reusing_compiled


class Unsupported(ValueError):
    """The implementation cannot run on this device, in this dtype or with this configuration."""


def check_config(hidden_size: int, num_layers: int = 1, bidirectional: bool = False, proj_size: int = 0,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
    """Raise ValueError unless the configuration is one nn.LSTM accepts."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    for what, flag in (("bidirectional", bidirectional), ("batch_first", batch_first)):
        if not isinstance(flag, bool):
            raise ValueError(f"{what} must be a bool, got {flag!r}")
    if not isinstance(proj_size, int) or isinstance(proj_size, bool) or not 0 <= proj_size < hidden_size:
        raise ValueError(f"proj_size must be an int, 0 <= proj_size < hidden_size ({hidden_size}), got {proj_size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")


def suffix(layer: int, direction: int) -> str:
    """nn.LSTM's parameter-name suffix of a layer and direction: "_l0", "_l1_reverse", ..."""
    return f"_l{layer}" + ("_reverse" if direction else "")


class LSTMImpl(nn.Module):
    """An LSTM with nn.LSTM's configuration: `module(x, state=None) -> (y, (h, c))`.

    x is (T, B, input_size), or (B, T, input_size) with batch_first; y is (T, B, D * H_out) (batch-first
    likewise), D = 2 if bidirectional else 1, H_out = proj_size or hidden_size.

    The state's shape: with one layer in one direction the state is (B, H_out) and (B, hidden_size),
    as the chapter has it, unless a 3-D state was passed in; otherwise, and whenever a 3-D state is
    passed in, it is nn.LSTM's (num_layers * D, B, H_out) and (num_layers * D, B, hidden_size). The
    returned state has the shape of the state passed in (3-D when none was and there is more than one
    layer or direction).

    Subclasses set `description`, `dtypes` (per device type) and `supports` (the CONFIG_DEFAULTS keys
    they run other than at their defaults), and implement `run` (one direction of one layer over a
    time-major sequence), `load_lstm_weights` and `lstm_weights` (one layer and direction in nn.LSTM's
    layout); `forward` stacks the layers and directions as the d2l book does, or a subclass replaces
    it (cudnn hands everything to nn.LSTM). With the default configuration and a 2-D state, `forward`
    is `run` of layer 0 and nothing else.

    x may also be a PackedSequence, as nn.LSTM takes it (batch_first then does not apply): the output is
    packed as x is, and the state is each sequence's at its own length (`forward_packed`, from `run`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: what runs it: "eager", "torchscript" or "inductor". The suite starts each runtime its grid
    #: uses once before the first cell, so no cell's first-call cost includes the process's start-up.
    runtime: ClassVar[str] = "eager"
    #: device type ("cpu", "cuda") -> dtypes this implementation runs in there.
    dtypes: ClassVar[dict[str, frozenset[torch.dtype]]] = {"cpu": FLOATS, "cuda": FLOATS}
    #: the configuration keywords (CONFIG_DEFAULTS' keys) this implementation runs away from their defaults.
    supports: ClassVar[frozenset[str]] = frozenset()
    #: True once this module runs what an earlier module compiled (under reuse_compiled()): its first calls then
    #: do not show what compiling costs.
    reused_compiled: bool = False

    def __init__(self, input_size: int, hidden_size: int, *, num_layers: int = 1, bidirectional: bool = False,
                 proj_size: int = 0, batch_first: bool = False, dropout: float = 0.0, device="cpu",
                 dtype=torch.float32):
        super().__init__()
        for what, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ValueError(f"{what} must be a positive int, got {size!r}")
        config = {"num_layers": num_layers, "bidirectional": bidirectional, "proj_size": proj_size,
                  "batch_first": batch_first, "dropout": dropout}
        check_config(hidden_size, **config)
        reason = self.unsupported_reason(device, dtype, **config)
        if reason:
            raise Unsupported(reason)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers, self.bidirectional, self.proj_size = num_layers, bidirectional, proj_size
        self.batch_first, self.dropout = batch_first, float(dropout)

    @classmethod
    def unsupported_reason(cls, device: str | torch.device, dtype: torch.dtype, **config) -> str | None:
        """Why this implementation cannot run on device in dtype with config (nn.LSTM's keywords), or None."""
        who = cls.name or cls.__name__
        device_type = torch.device(device).type
        if device_type not in cls.dtypes:
            return f"{who} does not run on {device_type} (runs on {', '.join(sorted(cls.dtypes))})"
        if dtype not in cls.dtypes[device_type]:
            known = ", ".join(sorted(str(d).removeprefix("torch.") for d in cls.dtypes[device_type]))
            return f"{who} does not run in {dtype} on {device_type} (supports {known})"
        unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown configuration keyword(s): {', '.join(unknown)}")
        missing = [key for key, value in config.items() if value != CONFIG_DEFAULTS[key] and key not in cls.supports]
        if missing:
            return f"{who} does not support {', '.join(missing)}"
        return None

    # -- the configuration's sizes

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """H_out: the size of h, proj_size when projected."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        """What layer `layer` reads: the input, or both directions' outputs of the layer below."""
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def layers_and_directions(self) -> list[tuple[int, int]]:
        """(layer, direction) in nn.LSTM's order: l0, l0_reverse, l1, ..."""
        return [(layer, d) for layer in range(self.num_layers) for d in range(self.num_directions)]

    def describe(self) -> str:
        """One line for reports; may depend on the device the module lives on."""
        return self.description

    # -- running

    def zero_state(self, batch_size: int, like: Tensor) -> State:
        """The zero state of one layer and direction: (B, H_out), (B, hidden_size)."""
        h = torch.zeros(batch_size, self.output_size, device=like.device, dtype=like.dtype)
        if self.proj_size == 0:
            return h, h.clone()
        return h, torch.zeros(batch_size, self.hidden_size, device=like.device, dtype=like.dtype)

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        """One direction of one layer over inputs (T, B, layer_input_size) from H, C -> outputs (T, B, H_out), H, C."""
        raise NotImplementedError

    def stacked_state(self, state: State | None) -> bool:
        """Whether forward takes and returns nn.LSTM's 3-D state (see the class docstring)."""
        if state is not None:
            return state[0].dim() == 3
        return self.num_layers * self.num_directions > 1

    def forward(self, x: Tensor | PackedSequence, state: State | None = None
                ) -> tuple[Tensor | PackedSequence, State]:
        if isinstance(x, PackedSequence):
            return self.forward_packed(x, state)
        if self.batch_first:
            x = x.transpose(0, 1)
        if self.num_layers == 1 and not self.bidirectional and not self.stacked_state(state):
            H, C = self.zero_state(x.shape[1], x) if state is None else state  # the chapter's LSTM
            y, H, C = self.run(x, H, C)
            return (y.transpose(0, 1) if self.batch_first else y), (H, C)
        y, state = self.forward_stacked(x, state)
        return (y.transpose(0, 1) if self.batch_first else y), state

    def forward_stacked(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The d2l book's deep and bidirectional RNN over time-major x, with nn.LSTM's 3-D state.

        Each layer reads the layer below's outputs, both directions' concatenated; the backward
        direction runs over the reversed sequence and its outputs are reversed back. Dropout (in
        training only) on every layer's outputs but the last's, as nn.LSTM does it.
        """
        H0, C0 = self.initial_state(x.shape[1], x, state)
        return self.stack(x, H0, C0, self.run, lambda t: t.flip(0))

    def initial_state(self, batch_size: int, like: Tensor, state: State | None) -> tuple[Tensor, Tensor]:
        """nn.LSTM's 3-D state (num_layers * D, B, size): zeros when none is given; ValueError for a wrong shape."""
        k = self.num_layers * self.num_directions
        want_h, want_c = (k, batch_size, self.output_size), (k, batch_size, self.hidden_size)
        if state is None:
            return like.new_zeros(want_h), like.new_zeros(want_c)
        H0, C0 = state
        if tuple(H0.shape) != want_h or tuple(C0.shape) != want_c:
            raise ValueError(f"state must be h {want_h} and c {want_c} (num_layers * directions, B, size), "
                             f"got {tuple(H0.shape)} and {tuple(C0.shape)}")
        return H0, C0

    def stack(self, x: Tensor, H0: Tensor, C0: Tensor, run, flip) -> tuple[Tensor, State]:
        """The layers and directions over x, each by `run(inputs, H, C, layer, direction) -> outputs, H, C`,
        the reverse direction's inputs and outputs through `flip` (a time reversal, or none where `run`
        reverses itself): each layer reads the layer below's outputs, both directions' concatenated on the
        last dimension, with dropout (in training only) on every layer's outputs but the last's, as nn.LSTM
        does it. (The memory model follows this loop's tensors, names included: `inputs` and `Y` hold
        theirs until they are rebound.)"""
        layer_inputs, Hs, Cs = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                i = layer * self.num_directions + direction
                inputs = layer_inputs if direction == 0 else flip(layer_inputs)
                Y, H, C = run(inputs, H0[i], C0[i], layer, direction)
                outputs.append(Y if direction == 0 else flip(Y))
                Hs.append(H)
                Cs.append(C)
            layer_inputs = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_inputs = F.dropout(layer_inputs, self.dropout, training=True)
        return layer_inputs, (torch.stack(Hs), torch.stack(Cs))

    # -- variable-length batches

    def forward_packed(self, x: PackedSequence, state: State | None = None) -> tuple[PackedSequence, State]:
        """nn.LSTM on a PackedSequence: outputs packed as x is, each sequence's final state at its own length.

        The state, given and returned, is in the batch's own order (as nn.LSTM's); a 2-D state for the
        chapter's one-layer LSTM as in `forward`. The recurrence itself is `run_packed`'s.
        """
        data, batch_sizes, sorted_indices, unsorted_indices = x
        two_d = not self.stacked_state(state)
        if two_d and state is not None:
            state = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        H0, C0 = self.initial_state(int(batch_sizes[0]), data, state)
        if sorted_indices is not None:  # the recurrence runs longest sequence first
            H0, C0 = H0.index_select(1, sorted_indices), C0.index_select(1, sorted_indices)

        def run(inputs: Tensor, H: Tensor, C: Tensor, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor]:
            return self.run_packed(inputs, batch_sizes, H, C, layer, direction)

        y, (H, C) = self.stack(data, H0, C0, run, lambda t: t)  # run_packed reverses within each sequence
        if unsorted_indices is not None:
            H, C = H.index_select(1, unsorted_indices), C.index_select(1, unsorted_indices)
        return PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices), ((H[0], C[0]) if two_d else (H, C))

    def run_packed(self, data: Tensor, batch_sizes: Tensor, H: Tensor, C: Tensor, layer: int = 0,
                   direction: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """One layer and direction over packed data (sum(batch_sizes), layer_input_size), the sequences sorted
        longest first, from H, C (B, size) in that order -> packed outputs, each sequence's final H, C.

        fastrnns' variable-length runners shrink the batch at every step; here the steps are cut into spans
        over which the batch stays the same, and each span is one `run` over its (steps, batch) block of the
        packed data, which is contiguous. Forward, the sequences that end leave the batch after a span, their
        state final; the reverse direction walks the spans from the last, each sequence joining the batch
        with its initial state at its own last step.
        """
        sizes, spans, offset, t = batch_sizes.tolist(), [], 0, 0
        while t < len(sizes):  # (offset into data, steps, batch)
            steps = 1
            while t + steps < len(sizes) and sizes[t + steps] == sizes[t]:
                steps += 1
            spans.append((offset, steps, sizes[t]))
            offset, t = offset + steps * sizes[t], t + steps
        outputs: list[Tensor] = [data] * len(spans)
        if direction == 0:
            done_H, done_C = [], []  # the final states of the sequences that have ended, shortest last
            for k, (start, steps, b) in enumerate(spans):
                if H.shape[0] > b:
                    done_H.append(H[b:])
                    done_C.append(C[b:])
                    H, C = H[:b], C[:b]
                Y, H, C = self.run(data[start:start + steps * b].view(steps, b, -1), H, C, layer, direction)
                outputs[k] = Y.reshape(steps * b, -1)
            return torch.cat(outputs), torch.cat([H, *done_H[::-1]]), torch.cat([C, *done_C[::-1]])
        H0, C0 = H, C
        H, C = H0[:0], C0[:0]
        for k in reversed(range(len(spans))):
            start, steps, b = spans[k]
            if H.shape[0] < b:  # the sequences whose last step this span holds start here
                H, C = torch.cat([H, H0[H.shape[0]:b]]), torch.cat([C, C0[C.shape[0]:b]])
            Y, H, C = self.run(data[start:start + steps * b].view(steps, b, -1).flip(0), H, C, layer, direction)
            outputs[k] = Y.flip(0).reshape(steps * b, -1)
        return torch.cat(outputs), H, C

    # -- weights in nn.LSTM's layout

    def weight_shapes(self, layer: int = 0) -> dict[str, tuple[int, ...]]:
        """nn.LSTM's shapes of one layer's (and direction's) weights, names without the suffix."""
        four_h, h_out = 4 * self.hidden_size, self.output_size
        shapes = {"weight_ih": (four_h, self.layer_input_size(layer)), "weight_hh": (four_h, h_out),
                  "bias_ih": (four_h,), "bias_hh": (four_h,)}
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        return shapes

    def load_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                          weight_hr: Tensor | None = None, *, layer: int = 0, direction: int = 0) -> None:
        """Copy one layer's and direction's weights given in nn.LSTM's layout: gates i, f, g, o; (4H, I),
        (4H, H_out), (4H,), (4H,), and with proj_size weight_hr (proj_size, H)."""
        raise NotImplementedError

    def lstm_weights(self, grad: bool = False, *, layer: int = 0, direction: int = 0) -> tuple[Tensor, ...]:
        """One layer's and direction's weights (or, with grad=True, their gradients) in nn.LSTM's layout, as
        new tensors: weight_ih, weight_hh, bias_ih, bias_hh, and weight_hr with proj_size."""
        raise NotImplementedError

    def check_lstm_weights(self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                           weight_hr: Tensor | None = None, layer: int = 0) -> None:
        """Raise ValueError unless the tensors have nn.LSTM's shapes for this module's layer."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} does not exist (num_layers={self.num_layers})")
        got = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih, "bias_hh": bias_hh}
        if weight_hr is not None:
            got["weight_hr"] = weight_hr
        want = self.weight_shapes(layer)
        if set(got) != set(want):
            raise ValueError("weight_hr must be given exactly when proj_size > 0"
                             f" (proj_size={self.proj_size})")
        for key, shape in want.items():
            if tuple(got[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(got[key].shape)}")

    def named_lstm_weights(self, grad: bool = False) -> dict[str, Tensor]:
        """Every weight (or gradient) under nn.LSTM's parameter names (weight_ih_l0, ..., weight_hr_l1_reverse),
        as new tensors in nn.LSTM's layout."""
        named = {}
        for layer, direction in self.layers_and_directions():
            tensors = self.lstm_weights(grad, layer=layer, direction=direction)
            for key, tensor in zip(self.weight_shapes(layer), tensors):
                named[key + suffix(layer, direction)] = tensor
        return named

    def load_nn_lstm(self, lstm: nn.LSTM) -> None:
        """Copy every weight of lstm, an nn.LSTM of this configuration (batch_first and dropout aside,
        which hold no weights); ValueError if its sizes or configuration differ or it has no biases."""
        mine = {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "bidirectional": self.bidirectional, "proj_size": self.proj_size, "bias": True}
        theirs = {key: getattr(lstm, key) for key in mine}
        differ = [f"{key} {theirs[key]!r} (here {mine[key]!r})" for key in mine if theirs[key] != mine[key]]
        if differ:
            raise ValueError(f"the nn.LSTM does not match this {self.name or type(self).__name__}: {', '.join(differ)}")
        params = dict(lstm.named_parameters())
        for layer, direction in self.layers_and_directions():
            tensors = [params[key + suffix(layer, direction)].detach() for key in self.weight_shapes(layer)]
            self.load_lstm_weights(*tensors, layer=layer, direction=direction)
