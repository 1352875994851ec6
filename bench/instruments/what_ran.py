"""What ran: the kernels and compilers one profiled step actually used, for the row's description.

An implementation's own description says what it is meant to be; which library runs depends on the
device, the dtype, the build and the CPU (oneDNN takes bfloat16 only where the CPU has native
bfloat16; nn.LSTM in bfloat16 on CUDA is not flattened, so cuDNN gets its weights copied each call;
TorchScript's fusers may or may not form groups). So the suite profiles one step and reads it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch._C._profiler import RecordScope
from torch.profiler import ProfilerActivity, profile

TORCHSCRIPT = "lstm_bench::torchscript_function"  # counts the events in TorchScript function scope

# Profiler event names of TorchScript's fusion groups, and of a call of an Inductor graph.
_FUSION_MARKS = ("FusionGroup", "TensorExprGroup", "CudaFusionGroup")
_INDUCTOR_CALL = "## Call CompiledFxGraph"


def profile_step(step: Callable[[], object], device: torch.device) -> Counter[str]:
    """Every profiler event's name, counted, over one call of step (input shapes recorded)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
    return event_names(prof)


def event_names(prof: profile) -> Counter[str]:
    """Every event's name in a finished profile (input shapes recorded), counted, with this module's marks."""
    names: Counter[str] = Counter()
    flattened = []
    for event in prof.events():
        names[event.name] += 1
        if event.scope == int(RecordScope.TORCHSCRIPT_FUNCTION):
            names[TORCHSCRIPT] += 1
        if event.name == "aten::_cudnn_rnn" and event.input_shapes:
            # _cudnn_rnn(input, weight[], weight_stride0, weight_buf, ...): no weight_buf means that
            # the weights were not one flat buffer, and cuDNN copies them into one on every call.
            flattened.append(len(event.input_shapes) > 3 and bool(event.input_shapes[3]))
    if flattened:
        names["lstm_bench::cudnn_weights_flattened" if all(flattened) else "lstm_bench::cudnn_weights_copied"] += 1
    return names


def summarize(names: Counter[str]) -> str:
    """One phrase naming the RNN kernel library, TorchScript fusion and Inductor graphs seen in names."""
    parts = []
    if names["aten::_cudnn_rnn"]:
        copied = names["lstm_bench::cudnn_weights_copied"]
        parts.append("cuDNN _cudnn_rnn, " + ("weights copied into a new buffer every call (not flattened)"
                                            if copied else "flattened weights"))
    elif names["aten::mkldnn_rnn_layer"]:
        parts.append("oneDNN mkldnn_rnn_layer")
    elif names["aten::lstm"]:
        parts.append("ATen native LSTM kernels (aten::lstm without a fused RNN library)")
    if names[TORCHSCRIPT]:
        groups = sum(n for name, n in names.items() if any(mark in name for mark in _FUSION_MARKS))
        parts.append(f"TorchScript, {groups} fusion-group calls" if groups else "TorchScript, no fusion groups")
    graphs = sum(n for name, n in names.items() if name.startswith(_INDUCTOR_CALL))
    if graphs:
        parts.append(f"Inductor, {graphs} compiled-graph calls")
    return "; ".join(parts) or "eager ATen ops"


def what_ran(step: Callable[[], object], device: torch.device) -> str:
    """Profile one call of step and say what ran in it."""
    return "ran: " + summarize(profile_step(step, device))
