#!/usr/bin/env bash
# The GPU checks, run on a machine with one CUDA device (not CI): the CUDA tests, then the operator benchmark.
# Usage: OUT=/some/dir bash benchmarks/gpu_checks.sh   (logs and results go under $OUT)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, torch_geometric; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py tests/test_hierarchy.py ${GPU_TESTS:-} 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/bench_hsa.py --device cuda --max-leaves "${MAX_LEAVES:-4194304}" --max-dense "${MAX_DENSE:-262144}" \
    --out-dir "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
