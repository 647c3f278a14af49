#!/usr/bin/env bash
# Convs served by cuDNN (issue 11), second device call: the worker's new defaults (CUDA graphs
# and exec gate on; graphs captured at LoadModelFromDisk): exec per model with --write (for
# conf/profiles/h200.toml), correctness through the runtime, end to end (simple and churn).
# Every result goes into $OUT/results.tgz. Usage (device): bash tools/bench/h200_cudnn2.sh [RUNS] [INF] [DUR]
set -uo pipefail
OUT=${OUT:-/tmp/out}; R=/tmp/results; mkdir -p "$OUT" $R
RUNS=${1:-200}; INF=${2:-30}; DUR=${3:-20}
B=.bundle/clockwork-worker
BD=$PWD/$B
MODELS=mlp,tinycnn,resnet18,resnet34,resnet50,resnet101
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step setup
bash $B/setup.sh || exit 1
source $B/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
python3 -c "import cuda.bindings, numpy; print('cuda-bindings', cuda.bindings.__version__, 'numpy', numpy.__version__)"
step exec gate+graphs
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --write --toml $R/h200_profiles.toml --json $R/exec_gate_graphs.json 2>&1 | tee $R/exec_gate_graphs.log
step correctness gate+graphs
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $R/check_gate_graphs.json 2>&1 | tee $R/check_gate_graphs.log
step check-model
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 cw check-model $BD/zoo/resnet50 --runs 20 2>&1 | tee $R/check_model.log
step e2e
python3 tools/bench/gpu_e2e.py --zoo $BD/zoo --model resnet50 --duration $DUR --out /tmp/e2e 2>&1 | tail -n 25 | tee $R/e2e.log
cp /tmp/e2e/e2e.json $R/e2e.json; tail -n 30 /tmp/e2e/worker.log > $R/e2e_worker_tail.log
step e2e churn
python3 tools/bench/gpu_e2e.py --zoo $BD/zoo --model resnet50 --workload poisson-open-loop --args "16 400" --duration $DUR --weights-cache 256MiB --out /tmp/e2e_churn 2>&1 | tail -n 25 | tee $R/e2e_churn.log
cp /tmp/e2e_churn/e2e.json $R/e2e_churn.json; tail -n 30 /tmp/e2e_churn/worker.log > $R/e2e_churn_worker_tail.log
step done
tar czf $OUT/results.tgz -C /tmp results
