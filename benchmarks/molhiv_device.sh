#!/usr/bin/env bash
# Device run (the H100 results in benchmarks/results/molhiv_h100; carry .gpu/ holding molhiv.tar.gz, a gzip tar of a processed ogbg_molhiv folder, and the ogb wheel): CUDA tests, then ogbg-molhiv (full data, OGB scaffold split) GIN / GCN / HSA graph transformer, 3 seeds each, in parallel.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
EPOCHS=${EPOCHS:-30}; LIMIT=${LIMIT:-420}; DATA=${DATA:-/tmp/hgdata}; RUNS=${RUNS:-/tmp/hgruns}; OUT=${OUT:-/tmp/hgout}
mkdir -p "$OUT" "$DATA/ogb" "$RUNS"
if ! python3 -c "import ogb" 2>/dev/null; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/ogb-*.whl && export PYTHONPATH=/tmp/site; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
tar -C "$DATA/ogb" -xzf .gpu/molhiv.tar.gz
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && [ "${TESTS:-1}" = 1 ]; then nvidia-smi -L; timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"; fi
for model in ${MODELS:-gin gcn gps-hsa}; do for seed in ${SEEDS:-0 1 2}; do
  timeout "$LIMIT" python3 -m hgattn train --config configs/ogbg-molhiv.yaml --model $model --seed $seed --epochs "$EPOCHS" \
    --device "$DEVICE" --data-root "$DATA" --out-dir "$RUNS/$model-$seed" --no-progress ${EXTRA:-} > "$RUNS/log-$model-$seed.txt" 2>&1 &
done; done
wait
for f in "$RUNS"/log-*.txt; do echo "== $f"; tail -4 "$f"; done > "$OUT/train_logs.txt"
python3 benchmarks/collect_runs.py "$RUNS" "$OUT/molhiv_runs.jsonl" | tee "$OUT/molhiv_summary.txt"
