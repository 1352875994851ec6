"""The public face: which kernel runs a cell, its path, and the prediction built from its count."""

from __future__ import annotations

import torch

from ...grid import DTYPES, MODES, Cell
from ..env import CpuDispatch, cpu_dispatch
from ..onednn import OneDNNBuffers, Probe
from .autocast import count as autocast_count
from .counts import (
    FUSED_IMPLS,
    IMPLS,
    INDUCTOR_COUNTED_ON,
    OPTIMIZERS,
    Counts,
    NotModelled,
    Prediction,
    Sizes,
    round_up,
    total,
)
from .cuda import library_bytes_cuda
from .cudnn import cudnn_algorithm, cudnn_walk
from .fused import fused_walk
from .native import native_walk
from .onednn_rnn import onednn_walk
from .ops import eager_walk, inductor_walk, torchscript_walk
from .walk import inference_gemm

#: kernel -> its walk: the step allocation by allocation, any layers and directions (the chapter's LSTM is one of each)
WALKS = {"autograd ops": eager_walk, "TorchScript": torchscript_walk, "Inductor": inductor_walk,
         "oneDNN": onednn_walk, "fused, eager steps": fused_walk, "fused, Inductor steps": fused_walk,
         "fused, Triton steps": fused_walk, "cuDNN": cudnn_walk, "ATen native": native_walk}


def kernel_of(impl: str, device: str, dtype: str, mode: str, cpu: CpuDispatch | None = None,
              proj_size: int = 0) -> str:
    """Which kernel runs the LSTM for this cell, as aten::lstm dispatches in torch 2.13 on `cpu` (this
    machine's dispatch facts unless given: a recorded CPU's, to predict for it). oneDNN's LSTM has no
    projection: with proj_size nn.LSTM runs ATen's native kernels (measured: per-step addmm, no mkldnn_rnn_layer)."""
    device_type = torch.device(device).type
    if impl == "scratch":
        return "autograd ops"
    if impl == "scripted":
        return "TorchScript"
    if impl == "compiled":
        return "Inductor"
    if impl in FUSED_IMPLS:
        return {"fused": "fused, eager steps", "fused_compiled": "fused, Inductor steps",
                "triton": "fused, Triton steps"}[impl]
    if impl != "cudnn":
        raise NotModelled(f"the memory model knows {', '.join(IMPLS)}, not {impl!r}")
    if device_type == "cuda":
        return "cuDNN"
    cpu = cpu or cpu_dispatch()
    if cpu.onednn and torch.backends.mkldnn.enabled and not proj_size:
        if dtype == "float32":
            return "oneDNN"
        if dtype == "bfloat16" and cpu.onednn_bf16:
            return "oneDNN"
        if dtype == "float16" and mode == "forward" and cpu.onednn_fp16:
            return "oneDNN"
    return "ATen native"


def path_of(kernel: str, dtype: str, mode: str, cpu: CpuDispatch | None) -> str:
    """The path a count follows, in words with the reason: which library runs the LSTM and the GEMMs in
    this dtype on this CPU (None: a CUDA device)."""
    if cpu is None:
        return f"{kernel} on CUDA"
    if dtype == "bfloat16":
        why = cpu.bf16_path()
        if kernel in ("oneDNN", "ATen native"):
            return why
        return f"{kernel}; bfloat16 GEMMs on " + (why if cpu.onednn_bf16 else "MKL: " + why.split(": ", 1)[1])
    if dtype == "float16" and kernel == "oneDNN":
        return "oneDNN float16 (inference): this CPU's oneDNN runs float16"
    if dtype == "float16" and mode == "forward" and kernel == "ATen native":
        return "ATen's native kernels: oneDNN does not run float16 here"
    return f"{kernel}, {dtype}" + (f" (oneDNN {cpu.onednn_version})" if kernel == "oneDNN" else "")


def predict_sizes(impl: str, sizes: Sizes, *, device: str = "cpu", dtype: str = "float32", mode: str = "train",
                  optimizer: str = "sgd", cuda_capability: tuple[int, int] | None = None,
                  cpu: CpuDispatch | None = None, onednn: OneDNNBuffers | None = None,
                  config: dict | None = None, amp: str = "none") -> Prediction:
    """The prediction for any sizes; CUDA predictions need no GPU (capability defaults to the GPU's, else sm_90).
    A CPU prediction counts the paths `cpu` dispatches: this machine's unless given (a recorded CPU's).
    `config`: nn.LSTM's keywords beyond the chapter's LSTM (CONFIG_DEFAULTS' keys: layers, directions, ...);
    `amp`: autocast's dtype over float32 parameters (bench/instruments/memory/autocast.py), "none" without."""
    if dtype not in DTYPES or mode not in MODES or optimizer not in OPTIMIZERS:
        raise ValueError(f"dtype {dtype!r}, mode {mode!r} or optimizer {optimizer!r} is not known")
    if min(sizes.batch_size, sizes.hidden_size, sizes.seq_len, sizes.vocab_size) <= 0:
        raise ValueError(f"sizes must be positive: {sizes}")
    cuda = torch.device(device).type == "cuda"
    if not cuda and cpu is None:  # this machine: its dispatch, and oneDNN's buffers read off its oneDNN
        cpu, onednn = cpu_dispatch(), onednn or Probe()
    kernel = kernel_of(impl, device, dtype, mode, cpu, proj_size=int((config or {}).get("proj_size", 0)))
    c = Counts(impl, sizes, dtype, mode, optimizer, cuda=cuda, flat_lstm=cuda and kernel == "cuDNN", cpu=cpu,
                onednn=onednn, config=config)
    fitted: list[str] = []
    notes: list[str] = []
    if kernel == "TorchScript" and mode == "train" and sizes.seq_len < 8:
        raise NotModelled("the memory model counts scripted from T = 8 (TorchScript's unrolled 8-step bodies); below, "
                          "its remainder loop holds weight-gradient terms not counted yet")
    if amp != "none":
        if dtype != "float32":
            raise NotModelled(f"autocast runs over float32 parameters, not {dtype}")
        low = Counts(impl, sizes, amp, mode, optimizer, cpu=cpu, onednn=onednn, config=config)
        acts, moments = autocast_count(c, low, kernel, amp)
        path = f"autocast {amp} over float32 parameters; {path_of(kernel, amp, mode, cpu)}"
    else:
        acts, moments = WALKS[kernel](c)
        moments = moments if c.train else [*moments, inference_gemm(c)]
        path = path_of(kernel, dtype, mode, cpu)
    compute = amp if amp != "none" else dtype  # what the LSTM and the GEMMs run in: under autocast, its dtype
    if kernel == "oneDNN" and compute == "float32":
        fitted.append("onednn_scratchpad_extra")
    elif kernel == "oneDNN" and onednn:
        notes.append(f"oneDNN's own {compute} buffers (reordered weights, GEMM buffers, scratchpad): {onednn.source}")
    elif kernel == "oneDNN":
        fitted.append("onednn_scratchpad_extra")
        notes.append(f"oneDNN's own {compute} buffers estimated with the float32 rules: not read off oneDNN for "
                     "this CPU")
    if not cuda and compute == "bfloat16" and cpu.native_bf16 and kernel != "oneDNN":
        notes.append("bfloat16 GEMMs' scratchpads " + (onednn.source if onednn else "not counted: not read off "
                                                      "oneDNN for this CPU"))
    if kernel == "Inductor" and mode == "train" and not torch.__version__.startswith(INDUCTOR_COUNTED_ON):
        notes.append(f"compiled's saved tensors were counted on torch {INDUCTOR_COUNTED_ON}; this is torch "
                     f"{torch.__version__}, whose partitioner may save others")
    if kernel == "cuDNN" and mode == "train":
        fitted.append("cudnn_reserve")
    if kernel == "cuDNN":
        fitted.append("cudnn_workspace")
        notes.append(cudnn_algorithm(sizes.hidden_size, dtype))
        if c.stacked or c.proj:
            notes.append("cuDNN with layers, directions, a projection or dropout: the reserve taken as cudnn_reserve's "
                         "(6L - 1) per direction, dropout's masks inside it and its states not counted; unmeasured")
    library = 0
    if cuda:
        if cuda_capability is None:
            cuda_capability = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else (9, 0)
        library = library_bytes_cuda(mode, cuda_capability)
        notes.append(f"CUDA: counted, not measured here; sm_{cuda_capability[0]}{cuda_capability[1]}; every "
                     "tensor rounded to 512 B; a reused cached block can charge up to ~1 MiB more")
        if kernel in ("TorchScript", "Inductor"):
            notes.append(f"{kernel} on CUDA fuses differently from the CPU; counted as on the CPU")
    peak_moment = max(moments, key=lambda m: total(m.live, cuda))
    peak = total(peak_moment.live, cuda) + library
    P, G, O = c.P, c.G, c.O
    A = total(acts, cuda)
    return Prediction(
        impl=impl, device=device, dtype=dtype, mode=mode, optimizer=optimizer, batch_size=c.B, hidden_size=c.H,
        seq_len=c.T, vocab_size=c.V, kernel=kernel, path=path, param_bytes=P,
        grad_bytes=G, optimizer_bytes=O, activation_bytes=A, workspace_bytes=peak - library - P - G - O - A,
        library_bytes=library, peak_bytes=peak,
        peak_at=peak_moment.name,
        peak_live={k: n * (round_up(e, 512) if cuda else e) for k, (n, e) in peak_moment.live.items() if n * e},
        fitted=tuple(fitted), notes=tuple(notes))


def predict(cell: Cell, optimizer: str = "sgd", *, cpu: CpuDispatch | None = None,
            onednn: OneDNNBuffers | None = None) -> Prediction:
    """The prediction for one grid cell (what the suite writes beside its measurement); `cpu`, `onednn`: as
    predict_sizes' (this machine's unless given)."""
    if cell.packed:
        raise NotModelled(f"{cell.impl}: a packed batch of sequences of their own lengths ({cell.lengths}) is not "
                          "counted: each step runs only the sequences still going (the batch sizes of lengths drawn "
                          "per batch), where the walk follows B sequences at every step")
    return predict_sizes(cell.impl, Sizes(cell.batch_size, cell.hidden_size, cell.seq_len, cell.vocab_size),
                         device=cell.device, dtype=cell.dtype, mode=cell.mode, optimizer=optimizer, config=cell.config,
                         amp=cell.amp, cpu=cpu, onednn=onednn)


def predicted_columns(cell: Cell, optimizer: str = "sgd") -> dict[str, int | None]:
    """The suite's prediction columns for a cell; empty (None) for an implementation or configuration the model does
    not count."""
    try:
        p = predict(cell, optimizer)
    except NotModelled:  # fused, triton, a module:Class implementation: nothing to predict, nothing to check
        return {"predicted_peak_bytes": None, "predicted_activation_bytes": None}
    return {"predicted_peak_bytes": p.peak_bytes, "predicted_activation_bytes": p.activation_bytes}


def per_sequence_bytes(impl: str, sizes: Sizes, **options) -> int:
    """Bytes one more sequence in the batch adds to the peak (the slope from B to B + 1)."""
    bigger = Sizes(sizes.batch_size + 1, sizes.hidden_size, sizes.seq_len, sizes.vocab_size)
    return predict_sizes(impl, bigger, **options).peak_bytes - predict_sizes(impl, sizes, **options).peak_bytes


def largest_batch(impl: str, budget_bytes: int, sizes: Sizes, **options) -> int:
    """The largest batch whose predicted peak fits in budget_bytes; 0 when not even a batch of 1 fits."""
    def fits(b: int) -> bool:
        return predict_sizes(impl, Sizes(b, sizes.hidden_size, sizes.seq_len, sizes.vocab_size),
                             **options).peak_bytes <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            return lo
    while hi - lo > 1:  # the peak grows with B: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo

