"""The d2l character model (one-hot -> LSTM -> Linear) and its training and inference steps.

The steps follow d2l's `train_epoch_ch8`: mean cross-entropy over all T*B predictions, backward,
global-norm gradient clipping at theta, plain SGD, with the state carried over detached. Beyond the
chapter, as people train LSTMs: a batch of sequences of their own lengths, packed (the loss over
the real tokens only), and mixed precision (torch.autocast around the forward and loss; a GradScaler
for float16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_impls
from lstm_impls import State


class RNNModel(nn.Module):
    """d2l's RNNModel: inputs (B, T) token ids -> logits (T*B, vocab), state.

    num_layers and bidirectional go to the LSTM (the book's deep and bidirectional sections, as
    `nn.LSTM(vocab, 256, 2)`); the output layer reads both directions' outputs, as d2l's RNNModel does.
    """

    def __init__(self, impl: str, vocab_size: int, hidden_size: int, *, num_layers: int = 1,
                 bidirectional: bool = False, proj_size: int = 0, batch_first: bool = False, dropout: float = 0.0,
                 device="cpu", dtype=torch.float32, **impl_options):
        super().__init__()
        self.vocab_size = vocab_size
        self.batch_first = batch_first
        self.rnn = lstm_impls.create(impl, vocab_size, hidden_size, num_layers=num_layers,
                                     bidirectional=bidirectional, proj_size=proj_size, batch_first=batch_first,
                                     dropout=dropout, device=device, dtype=dtype, **impl_options)
        directions = 2 if bidirectional else 1
        self.linear = nn.Linear(directions * (proj_size or hidden_size), vocab_size, device=device, dtype=dtype)

    def forward(self, inputs: Tensor, state: State | None = None, lengths: Tensor | None = None
                ) -> tuple[Tensor, State]:
        """With lengths (B,), each sequence's own, the LSTM takes the batch packed and the logits are the real
        tokens' only, in the packed order (`targets` puts the labels in it)."""
        tokens = inputs if self.batch_first else inputs.T  # (B, T) or, as the chapter feeds it, (T, B)
        X = F.one_hot(tokens.long(), self.vocab_size).to(self.linear.weight.dtype)
        if lengths is not None:
            packed, state = self.rnn(pack_padded_sequence(X, lengths.cpu(), batch_first=self.batch_first,
                                                          enforce_sorted=False), state)  # DDP moves it to the GPU
            return self.linear(packed.data), state
        Y, state = self.rnn(X, state)
        if self.batch_first:  # the logits in the chapter's order: time-major, as the labels are
            Y = Y.transpose(0, 1)
        return self.linear(Y.reshape(-1, Y.shape[-1])), state


def targets(Y: Tensor, lengths: Tensor | None = None) -> Tensor:
    """The labels Y (B, T) in the order of the model's logits: time-major, or packed at lengths (padding left out)."""
    if lengths is None:
        return Y.T.reshape(-1)
    return pack_padded_sequence(Y.T, lengths, enforce_sorted=False).data


def lstm_layout_weights(input_size: int, hidden_size: int, *, generator: torch.Generator | None = None,
                        sigma: float = 0.01, proj_size: int = 0) -> tuple[Tensor, ...]:
    """d2l's initialisation (normal * 0.01, zero biases) in nn.LSTM's layout, on the CPU in float32; with
    proj_size, weight_hh reads the projected h and a fifth tensor, weight_hr (P, H), projects it."""
    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator) * sigma

    zeros = torch.zeros(4 * hidden_size)
    weights = (normal(4 * hidden_size, input_size), normal(4 * hidden_size, proj_size or hidden_size), zeros,
               zeros.clone())
    return weights + ((normal(proj_size, hidden_size),) if proj_size else ())


def d2l_init_(model: RNNModel, seed: int = 0) -> RNNModel:
    """Give model d2l's initialisation from seed; every implementation gets the same numbers.

    Every layer and direction in nn.LSTM's order (l0, l0_reverse, l1, ...), each drawn after the one
    before from one generator, so a one-layer model gets the numbers it always got."""
    g = torch.Generator().manual_seed(seed)
    rnn, linear = model.rnn, model.linear
    for layer, direction in rnn.layers_and_directions():
        weights = lstm_layout_weights(rnn.layer_input_size(layer), rnn.hidden_size, generator=g,
                                      proj_size=rnn.proj_size)
        where = {"layer": layer, "direction": direction} if layer or direction else {}  # a plug-in may predate them
        rnn.load_lstm_weights(*(w.to(linear.weight) for w in weights), **where)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.01)
        linear.bias.zero_()
    return model


def detach_state(state: State | None) -> State | None:
    """d2l detaches the carried-over state so backward stops at the minibatch boundary."""
    return None if state is None else (state[0].detach(), state[1].detach())


def _forward_and_loss(model: RNNModel, X: Tensor, Y: Tensor, state: State | None, lengths: Tensor | None,
                      amp: torch.dtype | None) -> tuple[Tensor, Tensor, State]:
    """The logits and the mean cross-entropy over the real tokens, under autocast in amp when given."""
    with torch.autocast(X.device.type, dtype=amp, enabled=amp is not None):
        y_hat, state = model(X, state) if lengths is None else model(X, state, lengths)
        return y_hat, F.cross_entropy(y_hat, targets(Y, lengths)), state


def train_step(model: RNNModel, optimizer: torch.optim.Optimizer, X: Tensor, Y: Tensor,
               state: State | None = None, theta: float = 1.0, clock=None, *, lengths: Tensor | None = None,
               amp: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, State]:
    """One d2l training step on X, Y (B, T); returns the mean loss (a 0-d tensor) and the new state.

    lengths: each sequence's own (B,), the batch packed; amp: autocast's dtype around the forward and loss;
    scaler: float16's loss scaling (the gradients unscaled before clipping, the step skipped on inf).
    `clock.mark(phase)`, when given, is called as each phase ends: forward (with the loss), backward,
    optimizer (gradient clipping and the update)."""
    # the logits stay bound through backward and the update, as in d2l's train_epoch_ch8 (the memory model
    # counts them there)
    y_hat, loss, state = _forward_and_loss(model, X, Y, detach_state(state), lengths, amp)
    if clock is not None:
        clock.mark("forward")
    optimizer.zero_grad()
    (loss if scaler is None else scaler.scale(loss)).backward()
    if clock is not None:
        clock.mark("backward")
    if scaler is not None:
        scaler.unscale_(optimizer)
    # d2l's grad_clipping: scale all gradients by theta / global norm when the norm exceeds theta.
    torch.nn.utils.clip_grad_norm_(model.parameters(), theta)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if clock is not None:
        clock.mark("optimizer")
    return loss.detach(), detach_state(state)


@torch.no_grad()
def forward_step(model: RNNModel, X: Tensor, Y: Tensor, state: State | None = None,
                 clock=None, *, lengths: Tensor | None = None, amp: torch.dtype | None = None) -> tuple[Tensor, State]:
    """Inference: the same forward and loss, no gradients."""
    y_hat, loss, state = _forward_and_loss(model, X, Y, state, lengths, amp)
    if clock is not None:
        clock.mark("forward")
    return loss, state


def sgd(model: nn.Module, lr: float) -> torch.optim.SGD:
    """d2l's updater for the concise model: plain SGD, no momentum (so no optimizer state)."""
    return torch.optim.SGD(model.parameters(), lr=lr)


#: optimizer name -> what it keeps per parameter: d2l's plain SGD (nothing), SGD with momentum (one
#: buffer), Adam (two moments, and a step count per parameter).
OPTIMIZERS = ("sgd", "momentum", "adam")


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """One of OPTIMIZERS for model's parameters, with torch's defaults otherwise (foreach where it applies)."""
    if name == "sgd":
        return sgd(model, lr)
    if name == "momentum":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
