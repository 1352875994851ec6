"""The memory model held to its own record, field by field: a rewrite of how the model is written must not move a byte.

tests/data/predictions.json.gz holds every field of the model's prediction (or the reason it gives for not
counting) for: every recorded timeline cell (tests/data/timelines, predicted for the CPU that recorded it, oneDNN's
buffers off its step), every cell the tests of the model pass to it, and a sweep of CPU and CUDA cells (impls,
dtypes, autocast, modes, optimizers, sizes, layers, directions, projections, dropout). Reproducible on any CPU: a CPU
cell is predicted for a recorded CPU's dispatch facts (tests/data/timelines' three kinds), and oneDNN's own
bfloat16 buffers, which this machine's oneDNN would be probed for, come from `Synthetic`, a deterministic stand-in
that gives every shape and layout its own bytes. Rewrite the record (only where a difference is explained):

    python tests/test_memory_record.py
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest

from bench.grid import Cell
from bench.instruments import timelines
from bench.instruments.env import CpuDispatch
from bench.instruments.memory import (
    NotModelled,
    Sizes,
    largest_batch,
    per_sequence_bytes,
    predict,
    predict_sizes,
)
from bench.instruments.onednn import Gemm, Recorded

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "data" / "predictions.json.gz"
TIMELINES = sorted((ROOT / "tests" / "data" / "timelines").glob("*.json*"))
#: the recorded CPUs whose dispatch facts CPU cells are predicted for: AVX2, AVX512 emulating bfloat16, AVX512-BF16
CPU_KINDS = ("cpu-avx2", "cpu-avx512-emulated-bf16", "cpu-avx512-bf16-threads2")


class Synthetic:
    """oneDNN's own buffers made up, deterministically, of a plausible size (a float32 copy of the result, of the
    gates) and each shape and layout its own: a call for other sizes or another layout gives other bytes."""

    source = "synthetic (the record's stand-in for oneDNN)"

    @staticmethod
    def _hash(*key: object) -> int:
        return int(hashlib.sha256(repr(key).encode()).hexdigest()[:4], 16)

    def rnn_bytes(self, what: str, T: int, B: int, H: int, I: int, dtype: str = "bfloat16") -> int:
        h = self._hash("rnn", what, T, B, H, I, dtype)
        return (1 + h % 4) * 4 * B * H * 4 + 64 * (h // 4 % 128)

    def gemm_bytes(self, gemm: Gemm) -> int:
        h = self._hash("gemm", gemm)
        return (h % 3) * gemm.M * gemm.N * 4 + 64 * (h // 3 % 128)


def _timelines() -> dict[str, dict]:
    return {path.name.split(".")[0]: timelines.load(path) for path in TIMELINES}


def _cpus(loaded: dict[str, dict]) -> dict[str, CpuDispatch]:
    return {kind: CpuDispatch.from_dict(data["meta"]) for kind, data in loaded.items()}


def run(call: dict, loaded: dict[str, dict], cpus: dict[str, CpuDispatch]) -> dict:
    """One recorded call, made again: the prediction's every field, an int, or the reason it is not counted; as
    JSON reads it back (tuples as lists)."""
    return json.loads(json.dumps(_run(call, loaded, cpus)))


def _run(call: dict, loaded: dict[str, dict], cpus: dict[str, CpuDispatch]) -> dict:
    fn, cuda = call["fn"], call["device"] == "cuda"
    cpu = None if cuda else cpus[call["cpu"]]
    if call.get("timeline") is not None:
        kind, index = call["timeline"]
        onednn = Recorded(loaded[kind]["cells"][index]["events"], kind)
    else:
        onednn = None if cuda else Synthetic()
    options = {"device": call["device"], "dtype": call["dtype"], "mode": call["mode"], "optimizer": call["optimizer"],
               "cpu": cpu, "onednn": onednn, "config": call["config"], "amp": call["amp"]}
    if cuda:
        options["cuda_capability"] = tuple(call["cuda_capability"])
    sizes = Sizes(*call["sizes"])
    try:
        if fn == "predict":
            cell = Cell(call["impl"], call["device"], call["dtype"], call["mode"], *call["sizes"], amp=call["amp"],
                        lengths=call["lengths"], **(call["config"] or {}))
            return predict(cell, call["optimizer"], cpu=cpu, onednn=onednn).as_dict()
        if fn == "predict_sizes":
            return predict_sizes(call["impl"], sizes, **options).as_dict()
        if fn == "largest_batch":
            return {"int": largest_batch(call["impl"], call["budget"], sizes, **options)}
        return {"int": per_sequence_bytes(call["impl"], sizes, **options)}
    except (NotModelled, ValueError) as e:
        return {"error": type(e).__name__, "message": str(e)}


def _call(fn: str, impl: str, sizes, device="cpu", dtype="float32", mode="train", optimizer="sgd", config=None,
          amp="none", cpu=None, **extra) -> dict:
    call = {"fn": fn, "impl": impl, "sizes": list(sizes), "device": device, "dtype": dtype, "mode": mode,
            "optimizer": optimizer, "config": config or None, "amp": amp, "cpu": cpu if device == "cpu" else None}
    if device == "cuda":
        call["cuda_capability"] = list(extra.pop("cuda_capability", (9, 0)))
    return call | extra


def calls(loaded: dict[str, dict]) -> list[dict]:
    """Every call the record holds: the timelines' cells, the tests' cells, the CPU and CUDA sweeps."""
    import test_memory_model as t

    out = []
    for kind, data in loaded.items():  # each recorded cell, for the CPU that recorded it
        for i, rec in enumerate(data["cells"]):
            out.append(_call("predict_sizes", rec["impl"], (rec["batch_size"], rec["hidden_size"], rec["seq_len"],
                                                            rec["vocab_size"]), dtype=rec["dtype"], mode=rec["mode"],
                             optimizer=rec["optimizer"], amp=rec["amp"], cpu=kind, timeline=[kind, i]))
    tests = [(impl, (B, H, T, 28), dtype, mode, opt, {}, "none") for impl, B, H, T, dtype, mode, opt in t.GRID]
    tests += [(impl, (B, H, T, 28), "float32", mode, opt, {}, amp) for impl, B, H, T, amp, mode, opt in t.AMP_GRID]
    tests += [(impl, (B, H, T, 28), dtype, mode, opt, config, "none")
              for impl, B, H, T, dtype, mode, opt, config in t.CONFIG_GRID]
    tests += [("cudnn", (5, 24, 10, 28), "bfloat16", mode, "sgd", config, "none") for mode, config in [
        ("train", {"num_layers": 2}), ("train", {"bidirectional": True}),
        ("forward", {"num_layers": 2, "bidirectional": True, "dropout": 0.5})]]
    tests += [(impl, (B, H, T, 28), dtype, "train", opt, {}, amp) for impl, B, H, T, dtype, amp, opt in t.GEMM_CELLS]
    tests += [("scratch", (32, 256, 35, 28), "float32", "train", "sgd", {}, amp) for amp in ("none", "bfloat16")]
    tests += [("scripted", (5, 24, 6, 28), "float32", "train", "sgd", config, "none")
              for config in ({}, {"num_layers": 2})]
    tests += [("compiled", (5, 24, 10, 28), "float32", "train", "sgd", {}, "bfloat16"),
              ("scratch", (5, 24, 10, 28), "float32", "train", "sgd", {"num_layers": 2}, "bfloat16"),
              ("cudnn", (5, 24, 10, 28), "float32", "train", "sgd", {}, "float16")]
    for cpu in CPU_KINDS:  # the tests' cells, through predict as they call it
        for impl, sizes, dtype, mode, opt, config, amp in tests:
            out.append(_call("predict", impl, sizes, dtype=dtype, mode=mode, optimizer=opt, config=config, amp=amp,
                             cpu=cpu, lengths="full"))
        out.append(_call("predict", "scratch", (5, 24, 10, 28), cpu=cpu, lengths="uniform:0.5"))
        out.append(_call("predict", "tests.broken_impl:BrokenLSTM", (32, 256, 35, 28), cpu=cpu, lengths="full"))
        for impl in ("scratch", "cudnn"):
            out.append(_call("largest_batch", impl, (1, 256, 35, 28), cpu=cpu, budget=64 << 20))
            out.append(_call("per_sequence_bytes", impl, (32, 256, 35, 28), cpu=cpu))
    for impl in ("scratch", "cudnn"):
        out.append(_call("largest_batch", impl, (32, 256, 35, 28), device="cuda", budget=8 << 30))
    configs = [{}, {"num_layers": 2}, {"num_layers": 3, "dropout": 0.3}, {"bidirectional": True},
               {"num_layers": 2, "bidirectional": True, "dropout": 0.5}, {"proj_size": 16},
               {"num_layers": 2, "bidirectional": True, "proj_size": 8},
               {"num_layers": 3, "bidirectional": True, "proj_size": 16, "dropout": 0.3, "batch_first": True}]
    precisions = [("float32", "none"), ("bfloat16", "none"), ("float16", "none"), ("float32", "bfloat16"),
                  ("float32", "float16")]
    runs = [("train", "sgd"), ("train", "momentum"), ("train", "adam"), ("forward", "sgd")]
    for device, cpu, every in [("cuda", None, [(32, 256, 35, 28), (5, 24, 10, 28), (64, 1024, 100, 28),
                                               (3, 40, 7, 28)])] + [
            ("cpu", kind, [(5, 24, 10, 28), (32, 256, 35, 28), (3, 40, 7, 28)]) for kind in CPU_KINDS]:
        for impl in ("scratch", "scripted", "compiled", "cudnn", "fused", "fused_compiled", "triton"):
            for dtype, amp in precisions:
                for mode, opt in runs:
                    for sizes in every:
                        for config in configs:
                            out.append(_call("predict_sizes", impl, sizes, device=device, dtype=dtype, mode=mode,
                                             optimizer=opt, config=config, amp=amp, cpu=cpu))
    out.append(_call("predict_sizes", "scratch", (5, 24, 10, 28), dtype="bfloat16", amp="bfloat16", cpu=CPU_KINDS[0]))
    for impl in ("scratch", "cudnn", "fused"):  # another GPU's libraries
        out.append(_call("predict_sizes", impl, (32, 256, 35, 28), device="cuda", cuda_capability=(8, 0)))
    return out


def key(call: dict) -> str:
    return json.dumps(call, sort_keys=True)


def write(path: Path = RECORD) -> int:
    """Predict every call and write the record (sorted, gzip without a timestamp: the same bytes each time)."""
    loaded = _timelines()
    cpus = _cpus(loaded)
    record = {key(call): run(call, loaded, cpus) for call in calls(loaded)}
    text = json.dumps(record, sort_keys=True, indent=0)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
        z.write(text.encode())
    return len(record)


def differences(record: dict[str, dict], loaded: dict[str, dict]) -> list[tuple[str, str, object, object]]:
    """(call, field, recorded, now) for every field that is not what the record holds."""
    cpus = _cpus(loaded)
    found = []
    for k, was in record.items():
        now = run(json.loads(k), loaded, cpus)
        for field in sorted(set(was) | set(now)):
            if was.get(field) != now.get(field):
                found.append((k, field, was.get(field), now.get(field)))
    return found


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict]:
    return _timelines()


@pytest.fixture(scope="module")
def record() -> dict[str, dict]:
    with gzip.open(RECORD, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_every_prediction_is_the_recorded_one(record, loaded):
    assert len(record) > 10000 and sum('"timeline"' in k for k in record) == sum(len(d["cells"]) for d in
                                                                                  loaded.values())
    found = differences(record, loaded)
    assert not found, f"{len(found)} fields differ, the first: " + "\n".join(map(str, found[:5]))


def test_a_changed_prediction_is_found(record, loaded):
    k = next(k for k, v in record.items() if "peak_bytes" in v and '"fn": "predict"' in k)
    altered = {k: record[k] | {"peak_bytes": record[k]["peak_bytes"] + 1}}
    assert [(f, w - n) for _, f, w, n in differences(altered, loaded)] == [("peak_bytes", 1)]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(f"{write()} predictions written to {RECORD.relative_to(ROOT)}")
