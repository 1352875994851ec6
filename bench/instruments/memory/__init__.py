"""The memory model: every part of a step's memory, per implementation, counted from the tensors.

The package: `counts` (a cell's sizes and parameters, Prediction), `walk` (a step allocation by allocation and
the moments every kernel shares), a module per kernel family (`ops`: the chapter's cell as eager autograd,
TorchScript and Inductor ops; `fused`: the fused sequence; `onednn_rnn`: oneDNN's LSTM; `native`: ATen's native
LSTM; `cudnn`: cuDNN), `autocast`, `cuda` (the libraries' workspaces) and `predict` (the public face, below).

For a cell (implementation, device, dtype, mode, optimizer, sizes B, H, T, V) it predicts what the
suite measures (bench/instruments/measure.py): param_bytes, grad_bytes, optimizer_bytes,
activation_bytes (storages autograd saves, parameters excluded), workspace_bytes (the rest of the
peak), library_bytes (CUDA: cuBLAS/cuBLASLt workspaces kept across steps) and peak_bytes.

How: every count follows the program allocation by allocation (walk.Step, one walk per kernel family:
predict.WALKS): LSTMImpl.forward_stacked around each implementation's sequence, each layer and direction in
turn (the chapter's LSTM is one layer in one direction), then the output layer and the loss, backward top
down, the optimizer step. At each moment that can be the peak (end of forward, a point in backward, a GEMM
with its scratchpad, ...) it snapshots the tensors alive then, as (count, bytes each), from what the code
allocates and what autograd keeps; the peak is the largest moment. Nothing is fitted to the
totals. The few constants that are measured rather than derived are in FITTED, each with the
measurement it came from, and a prediction that uses one lists it in `fitted`.

Symbols: s = bytes per element of the dtype; u = B*H*s (one (B, H) tensor); I = V (one-hot input).
The counts below were derived from the code (lstm_impls/cell.py, torch's autograd formulas,
aten/src/ATen/native/RNN.cpp and mkldnn/RNN.cpp, oneDNN's rnn_utils) and checked event by event
against the profiler's allocation timeline of one step (torch 2.13, oneDNN 3.12), on three kinds of
CPU (tests/data/timelines).

The path depends on what the CPU dispatches (env.CpuDispatch, this machine's unless a recorded CPU's
is given): where oneDNN runs bfloat16 (AVX512 and newer), nn.LSTM's bfloat16 goes to oneDNN and every
bfloat16 matmul with M*K*N > 16**3 to oneDNN's GEMM, which holds a scratchpad while it runs
(counts.Counts.gemm_scratch); elsewhere to ATen's native kernels and MKL. oneDNN's own bfloat16 buffers
(reordered weights, brgemm's blocked buffers, the RNN scratchpad) follow unpublished per-ISA
heuristics: they are read off oneDNN (bench/instruments/onednn.py), everything else is counted.

What each kernel saves for backward (activation_bytes), per step t of T:
- autograd ops (scratch, and nn.LSTM on ATen's native CPU kernels): 7 (B, H) tensors: the previous
  h and c (for t = 0 the carried state), the gates I, F, O, C~ and tanh(C) (native: the (B, 4H)
  gates buffer, the previous h and c, tanh(c)); plus the one-hot input (T, B, V), the stacked
  outputs (T, B, H), log-softmax (T*B, V), the int64 target and a scalar total weight.
- TorchScript (scripted): the same tensors (autodiff's differentiable graphs capture them).
- Inductor (compiled, cell scope): what the min-cut partitioner saves per call; see ops.inductor_walk.
- oneDNN (nn.LSTM, float32 on a CPU): the training workspace (onednn_rnn.onednn_workspace_bytes), the input,
  the carried state, the outputs and the final h, c.
- cuDNN: the reserve space (fitted, see FITTED), input, state, outputs.
- the fused sequence (lstm_impls/fused_cell.py): the input, h0 and the outputs; fused and
  fused_compiled then backward's factors (T, B, 4H) and F, KC (T, B, H): 7 (B, H) values per step;
  triton the activated gates and every c, and c0: 6 per step.

Where the peak happens (Prediction.peak_at, with what is alive then in Prediction.peak_live):
- training, end of forward: every saved tensor, the logits and last step's gradients (zero_grad runs
  after forward) - small H and small B*T*V (scratch, compiled);
- the loss's and the output layer's backward: log-softmax, two (T*B, V) gradients, then dY (T, B, H)
  beside dlogits - when B*T is large against H*H (e.g. H 64-128 with B 64-96);
- the LSTM's backward at step T-2, when H*H dominates: all new gradients exist and the step's weight
  gradient waits to be added - one (H, H) term (scratch), the step's 12 weight gradients (compiled),
  the 8 steps of an unrolled body (scripted), W_hh's out-of-place sum (ATen native);
- ATen native, forward at torch.stack: the input projection (T, B, 4H) and every step's gates;
- oneDNN, inside mkldnn_rnn_layer_backward: workspace, scratchpad, weights reordered both ways,
  float32 diff buffers;
- the fused sequence: a forward step, with the input projection and the gates' buffer, both
  (T, B, 4H); or backward's first step, with the gates' gradients (T, B, 4H) beside the gates; or
  W_h's gradient (two (H, 4H) at once) when H*H dominates; fused_compiled: Inductor's graph for
  backward's factors, which copies the buffer it mutates;
- Adam on a CPU with small batches: the optimizer step (sqrt and quotient of the largest parameter);
- inference: torch.stack of the outputs (the list and the stacked copy), or inside mkldnn_rnn_layer.

Under torch.autocast (Cell.amp) the counts are the autocast module's: for one layer and direction, its own
walk of the casts around the low-precision walks of the fused sequence and of oneDNN (fused.fused_walk,
onednn_rnn.onednn_walk), and of the chapter's ops under autocast.
"""


from __future__ import annotations

from .counts import FITTED, IMPLS, MIB, OPTIMIZERS, NotModelled, Prediction, Sizes
from .predict import kernel_of, largest_batch, path_of, per_sequence_bytes, predict, predict_sizes, predicted_columns

__all__ = ["FITTED", "IMPLS", "MIB", "OPTIMIZERS", "NotModelled", "Prediction", "Sizes", "kernel_of", "largest_batch",
           "path_of", "per_sequence_bytes", "predict", "predict_sizes", "predicted_columns"]
