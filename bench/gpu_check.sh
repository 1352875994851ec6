#!/usr/bin/env bash
# The GPU check: the test suite with its CUDA tests, then a small GPU grid through `lstm-bench run`.
# Usage: bash bench/gpu_check.sh [RESULTS_DIR]   (runs from a checkout; no install needed)
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
python3 -m pytest tests/ -q -rs -p no:cacheprovider
tests=$?
python3 -m bench.cli run --device cuda --results-dir "$results" --run-id gpu-check \
  --batch-sizes 32,128 --hidden-sizes 256,1024 --benchmark-max-time=0.5
grid=$?
echo "gpu check: tests exit $tests, grid exit $grid"
exit $(( tests || grid ))
