#!/usr/bin/env bash
# The code task (method names from Python ASTs, `code-python`) on this project's 2-core CPU: HSA, FSA, GIN-VN and
# GCN-VN over SEEDS, JOBS runs at a time with one torch thread each, on a seeded subset of MAX_GRAPHS functions
# (same subset for every run) at width 64, 3 layers. Resumable: a run with a checkpoint continues from it.
# Summary: python benchmarks/collect_runs.py "$RUNS" "$RUNS/runs.jsonl" --metric f1
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
EPOCHS=${EPOCHS:-15}; MAX_GRAPHS=${MAX_GRAPHS:-16000}; RUNS=${RUNS:-runs/code_cpu}; JOBS=${JOBS:-2}
mkdir -p "$RUNS"
run_one() {
  local model=$1 seed=$2 out="$RUNS/$1-$2" resume=""
  compgen -G "$out/*/checkpoint.pt" > /dev/null && resume=--resume
  python -m hgattn train --config configs/code.yaml --model "$model" --seed "$seed" --epochs "$EPOCHS" \
    --hidden 64 --layers 3 --threads 1 --max-graphs "$MAX_GRAPHS" --out-dir "$out" --no-progress $resume \
    >> "$RUNS/log-$model-$seed.txt" 2>&1
}
export -f run_one; export RUNS EPOCHS MAX_GRAPHS
for seed in ${SEEDS:-0 1 2}; do for model in ${MODELS:-fsa hsa gin-vn gcn-vn}; do echo "$model $seed"; done; done |
  xargs -P "$JOBS" -L 1 bash -c 'run_one "$0" "$1"'
