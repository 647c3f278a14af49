#!/usr/bin/env bash
# Everything measured on the H200, in one device call: unpack the worker bundle (runtime-only
# TVM, wheels, sm_90 models), environment checks, correctness, exec/loadweights benchmarks,
# PyTorch comparison, end to end. Results (JSON, logs) go to $OUT.
# Usage (device): bash tools/bench/h200_run.sh [quick]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
QUICK=${1:-}
B=.bundle/clockwork-worker
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step setup
bash $B/setup.sh || exit 1
source $B/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,persistence_mode,compute_mode --format=csv
python3 -c "import cuda.bindings, pynvml, numpy; print('cuda-bindings', cuda.bindings.__version__, 'numpy', numpy.__version__)"
step profile check
cw profile check
BD=$PWD/$B
RUNS=200; INF=200; DUR=30
[ "$QUICK" = quick ] && { RUNS=30; INF=30; DUR=10; }
step correctness
python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check.json 2>&1 | tee $OUT/check.log
step exec
python3 tools/bench/gpu_exec.py --zoo $BD/zoo --runs $RUNS --write --toml $OUT/h200_profiles.toml --json $OUT/exec.json
step check-model
cw check-model $BD/zoo/resnet50 --runs 20
step loadweights
python3 tools/bench/gpu_loadweights.py --zoo $BD/zoo --json $OUT/load.json
step torch
python3 tools/bench/gpu_vs_torch.py --zoo $BD/zoo --runs $RUNS --json $OUT/torch.json
step e2e
python3 tools/bench/gpu_e2e.py --zoo $BD/zoo --model resnet50 --duration $DUR --out /tmp/e2e
cp /tmp/e2e/e2e.json $OUT/e2e.json; tail -n 30 /tmp/e2e/worker.log > $OUT/e2e_worker_tail.log
step done
