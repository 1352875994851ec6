"""Planted implementations for calibrating `lstm-bench compare`: `tests.slow_impl:Class` from the repository
root (`slow_impl:Class` inside the tests, like broken_impl).

`SlowScratchLSTM` is the scratch LSTM doing about 20% more work per training step, and nothing else:
before the real loop it runs the first `extra_fraction` of the time steps again, forward and backward, on
detached copies of its inputs and weights (torch.autograd.grad, the result dropped), so outputs, gradients and
the graph autograd keeps are scratch's, while the step takes longer by that share of its own work (in
inference, the extra steps' forward). Real work, not a sleep. `ScratchCopy` is scratch under another name,
for an A/A comparison inside one run. Compare either against scratch with `--match-impl NAME=scratch`.
"""

import math

import torch
from torch import Tensor

from lstm_impls import cell
from lstm_impls.scratch import ScratchLSTM


class SlowScratchLSTM(ScratchLSTM):
    """scratch plus `extra_fraction` of its time steps computed again, forward and backward, on detached copies."""

    description = "scratch LSTM + 22% of its time steps again, forward and backward (planted ~20% slowdown)"
    #: the LSTM's forward and backward are nearly the whole training step (the output layer, the loss and the
    #: update are the rest), so 22% more of its steps make the step ~20% slower
    extra_fraction = 0.22

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        extra = inputs[:math.ceil(self.extra_fraction * inputs.shape[0])].detach()
        grad = torch.is_grad_enabled()
        with torch.enable_grad() if grad else torch.no_grad():
            params = [p.detach().requires_grad_(grad) for p in self.params(layer, direction)]
            if self.proj_size:
                W_hr = self.projection(layer, direction).detach().requires_grad_(grad)
                y = cell.lstmp(extra, H.detach(), C.detach(), params, W_hr)[0]
                params.append(W_hr)
            else:
                y = cell.lstm(extra, H.detach(), C.detach(), params)[0]
            if grad:
                torch.autograd.grad(y.sum(), params)
        return super().run(inputs, H, C, layer, direction)


class ScratchCopy(ScratchLSTM):
    """scratch, unchanged, under another name."""

    description = "d2l scratch LSTM (a copy, for A/A comparisons)"
