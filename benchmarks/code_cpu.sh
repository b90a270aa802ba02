#!/usr/bin/env bash
# The code task (method names from Python ASTs, `code-python`) on this project's 2-core CPU: HSA, FSA, GIN-VN and
# GCN-VN over SEEDS, JOBS runs at a time with one torch thread each, on a seeded subset of MAX_GRAPHS functions
# (same subset for every run) at width 64, 3 layers, batch BATCH. Resumable: a run with a checkpoint continues from it.
# Summary: python benchmarks/collect_runs.py "$RUNS" "$RUNS/runs.jsonl" --metric f1
set -u
DATA_ROOT=${DATA_ROOT:-}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
EPOCHS=${EPOCHS:-5}; MAX_GRAPHS=${MAX_GRAPHS:-16000}; BATCH=${BATCH:-32}; RUNS=${RUNS:-runs/code_cpu}; JOBS=${JOBS:-2}
mkdir -p "$RUNS"
python -c "import sys; from hgattn.datasets import PythonCode; PythonCode(sys.argv[1])" \
  "${DATA_ROOT:-runs/data}/python_code"   # built once, before the parallel runs read it
run_one() {
  local model=$1 seed=$2 out="$RUNS/$1-$2" resume=""
  compgen -G "$out/*/checkpoint.pt" > /dev/null && resume=--resume
  python -m hgattn train --config configs/code.yaml --model "$model" --seed "$seed" --epochs "$EPOCHS" \
    --hidden 64 --layers 3 --batch-size "$BATCH" --threads 1 --max-graphs "$MAX_GRAPHS" --out-dir "$out" \
    ${DATA_ROOT:+--data-root "$DATA_ROOT"} --no-progress $resume \
    >> "$RUNS/log-$model-$seed.txt" 2>&1
}
export -f run_one; export RUNS EPOCHS MAX_GRAPHS BATCH DATA_ROOT
for seed in ${SEEDS:-0 1 2}; do for model in ${MODELS:-fsa hsa gin-vn gcn-vn}; do echo "$model $seed"; done; done |
  xargs -P "$JOBS" -L 1 bash -c 'run_one "$0" "$1"'
