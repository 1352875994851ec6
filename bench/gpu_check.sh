#!/usr/bin/env bash
# The GPU check, for a machine with one NVIDIA GPU, torch with CUDA installed and no network (within 8 minutes:
# GPU time comes in short windows): the tests' CUDA cases (the CPU ones are CI's), `lstm-bench check --device
# cuda`, a small GPU grid of every implementation in two processes, packed and autocast cells, the error along T
# per precision, `lstm-bench profile` of the d2l config, and the report of the grid.
# Runs from a checkout; no install needed.
# Usage: bash bench/gpu_check.sh [RESULTS_DIR]      (PYTHON=/path/to/python to choose the interpreter)
# Exit status: 0 when every part passed; else 1, after running every part. Each part's exit is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
python=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
started=$SECONDS
summary=()

part() {  # part NAME COMMAND...: run it, print and remember its exit status and seconds
  local name=$1 t0=$SECONDS code
  shift
  echo "== $name: $*"
  "$@"
  code=$?
  echo "== $name: exit $code ($((SECONDS - t0)) s)"
  summary+=("$name=$code")
  return "$code"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c "
import sys, torch
ok = torch.cuda.is_available()
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      torch.cuda.get_device_name() if ok else '')
sys.exit(0 if ok else 'gpu check: CUDA is not available to torch')" || exit 1

failed=0
# The tests' CUDA cases (tests/test_cuda.py and every test parametrized on the cuda device), which skip on a CPU
# (-rs lists any skip); the whole suite is CI's on a CPU (about 6 minutes there in two processes).
part tests "$python" -m pytest tests/ -q -rs -p no:cacheprovider -k cuda || failed=1
# Every implementation against nn.LSTM in float64 on the GPU: outputs, state and every gradient.
part check "$python" -m bench.cli check --device cuda || failed=1
# A small GPU grid of every implementation at the d2l config (batch 32, hidden 256: its rows give each
# implementation's library bytes), in two fresh processes (the second compiles from the first's caches), none
# added: the compiles, not the step time, set this part's minutes (about 30 s a compiled cell cold, estimated;
# docs/sweeps.md), so one shape keeps the whole check within 8 minutes.
part grid "$python" -m bench.cli run --device cuda --impls all --results-dir "$results" --run-id gpu-check \
  --batch-sizes 32 --hidden-sizes 256 --processes 2 --benchmark-max-time=0.5 || failed=1
# Packed variable-length batches and autocast on the GPU: cuDNN's own packed kernels and the eager and Triton
# implementations' spans, padded beside packed, float32 beside autocast bfloat16 and float16 (GradScaler); the
# compiled ones are left out here, as each of their cells compiles afresh (minutes in all).
part packed-amp "$python" -m bench.cli run --device cuda --impls cudnn,scratch,fused,triton --results-dir "$results" --run-id gpu-packed-amp \
  --batch-sizes 32 --hidden-sizes 256 --lengths full,uniform:0.5 --amp none,bfloat16,float16 \
  --processes 1 --benchmark-max-time=0.3 || failed=1
part check-packed "$python" -m bench.cli check --device cuda --lengths uniform:0.5 || failed=1
# How the error grows along T in each precision on the GPU (cuDNN's float16 and autocast included).
part accuracy "$python" -m bench.cli check --device cuda --accuracy --impls cudnn,scratch,fused,triton \
  --batch-size 8 --hidden-size 128 \
  --out "$results/gpu-check" || failed=1
# Why a GPU step takes what it takes: `lstm-bench profile` at the d2l config into the grid's run directory (its report
# then shows it): kernel time against wall time, kernels per step, the GPU's idle share, a verdict per cell, the
# traces, and the caching allocator's history (memory-snapshot-*.pickle, for pytorch.org/memory_viz); the compiled
# implementations are left out (each compiles afresh).
if "$python" -m bench.cli profile --help >/dev/null 2>&1; then
  part profile "$python" -m bench.cli profile --device cuda --impls cudnn,scratch,fused,triton \
    --out "$results/gpu-check" || failed=1
else
  echo "== profile: skipped (this checkout has no \`lstm-bench profile\`)"
  summary+=("profile=skipped")
fi
# The report of that grid (`lstm-bench run` writes one too; this is the command on its own). Tolerated where
# this checkout predates `lstm-bench report`.
if "$python" -m bench.cli report --help >/dev/null 2>&1; then
  part report "$python" -m bench.cli report "$results/gpu-check" || failed=1
else
  echo "== report: skipped (this checkout has no \`lstm-bench report\`)"
  summary+=("report=skipped")
fi

echo "gpu check: ${summary[*]} ($((SECONDS - started)) s)"
exit "$failed"
