#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: the GPU tests, then the loop benchmark on the GPU, in
# under 10 minutes. Run from anywhere:  bash benchmarks/gpu_check.sh [--write]
# --write puts the benchmark's tables into docs/performance.md (section "bench_loop cuda").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device here: this check needs a GPU"
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
# GPU tests: fast path on the shipped models, bf16 ensemble labels against float32, compiled forwards.
timeout 240 python -m pytest -m gpu -q -p no:cacheprovider -s tests/test_fastpath.py tests/test_device.py
# The loop against MONAI, every task at its defaults (12 slices), batched members, fast path, on CUDA.
timeout 300 python benchmarks/bench_loop.py --device cuda --steps 50 --slices 12 --repeats 3 "$@"
