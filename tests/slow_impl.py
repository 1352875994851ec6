"""A planted slowdown for calibrating `lstm-bench compare` (loaded as tests.slow_impl:SlowScratchLSTM).

The scratch LSTM doing a quarter more recurrent work: after the real loop it runs the first quarter of
the time steps again and adds the result times zero, so outputs and gradients stay exactly scratch's
while forward and backward both do ~25% more cell steps (~20% more step time once the output layer,
loss, clipping and SGD are counted). Compare it against scratch with `--match-impl`.
"""

import math

from torch import Tensor

from lstm_impls import cell
from lstm_impls.scratch import ScratchLSTM


class SlowScratchLSTM(ScratchLSTM):
    """scratch plus `extra_fraction` of its time steps computed again (real work, not a sleep)."""

    description = "scratch LSTM + 25% redundant time steps (planted slowdown)"
    extra_fraction = 0.25

    def run(self, inputs: Tensor, H: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, H_end, C_end = cell.lstm(inputs, H, C, self.params())
        extra_steps = math.ceil(self.extra_fraction * inputs.shape[0])
        redundant, _, _ = cell.lstm(inputs[:extra_steps], H, C, self.params())
        return y + 0 * redundant.sum(), H_end, C_end  # zero times the extra work: in the graph, not in the value
