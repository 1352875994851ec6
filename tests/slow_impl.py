"""Planted implementations for calibrating `lstm-bench compare`: `tests.slow_impl:Class` from the repository
root (`slow_impl:Class` inside the tests, like broken_impl).

`SlowScratchLSTM` is the scratch LSTM doing about 20% more work per training step, and nothing else:
after the real loop it runs the first `extra_fraction` of the time steps again without autograd, so
outputs, gradients and the memory autograd keeps are scratch's (the extra steps' temporaries are
freed one step at a time) while the step takes longer. `ScratchCopy` is scratch under another name,
for an A/A comparison inside one run. Compare either against scratch with `--match-impl NAME=scratch`.
"""

import math

import torch
from torch import Tensor

from lstm_impls.scratch import ScratchLSTM


class SlowScratchLSTM(ScratchLSTM):
    """scratch plus `extra_fraction` of its time steps computed again, forward only (real work, not a sleep)."""

    description = "scratch LSTM + 60% of its time steps again without autograd (planted ~20% slowdown)"
    #: the forward is about a third of a training step, so 60% more forward steps make the step ~20% slower
    extra_fraction = 0.6

    def run(self, inputs: Tensor, H: Tensor, C: Tensor, layer: int = 0, direction: int = 0
            ) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            super().run(inputs[:math.ceil(self.extra_fraction * inputs.shape[0])], H, C, layer, direction)
        return super().run(inputs, H, C, layer, direction)


class ScratchCopy(ScratchLSTM):
    """scratch, unchanged, under another name."""

    description = "d2l scratch LSTM (a copy, for A/A comparisons)"
