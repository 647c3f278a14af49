#!/usr/bin/env bash
# Everything measured on the H200: unpack the worker bundle (runtime-only TVM, wheels, sm_90
# models), environment checks, correctness, exec/loadweights benchmarks (direct calls and the
# CUDA-graph mode), PyTorch comparison, end to end. Results (JSON, logs) go to $OUT.
# Usage (device): bash tools/bench/h200_run.sh [quick|full] [all|bench|e2e]
#   bench: everything but the end-to-end runs; e2e: only those (one device call each fits)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
QUICK=${1:-full}
PART=${2:-all}
B=.bundle/clockwork-worker
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step setup
bash $B/setup.sh || exit 1
source $B/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,persistence_mode,compute_mode --format=csv
python3 -c "import cuda.bindings, pynvml, numpy; print('cuda-bindings', cuda.bindings.__version__, 'numpy', numpy.__version__)"
BD=$PWD/$B
MODELS=mlp,tinycnn,resnet18,resnet34,resnet50,resnet101
RUNS=200; INF=200; DUR=30
[ "$QUICK" = quick ] && { RUNS=30; INF=30; DUR=10; }
if [ "$PART" != e2e ]; then
step profile check
cw profile check 2>&1 | tee $OUT/profile_check.log
# optional second zoo to compare in the torch step (e.g. ResNet-50 in the other layout)
ALSO=""
if [ -d $B/zoo_alt ]; then
    python3 -m clockwork.model.build weights $B/zoo_alt/*/ && ALSO="--also $BD/zoo_alt"
fi
step correctness
python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check.json 2>&1 | tee $OUT/check.log
step exec
python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --write --toml $OUT/h200_profiles.toml --json $OUT/exec.json 2>&1 | tee $OUT/exec.log
step graphs-mode
# the worker's CUDA graph mode (weights at fixed addresses): correctness through the runtime,
# exec per batch size, LoadWeights
CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check_graphs.json 2>&1 | tee $OUT/check_graphs.log
CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --toml $OUT/h200_profiles_graphs.toml --json $OUT/exec_graphs.json 2>&1 | tee $OUT/exec_graphs.log
CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_loadweights.py --zoo $BD/zoo --json $OUT/load_graphs.json 2>&1 | tee $OUT/load_graphs.log
step exec-gate
# the exec gate (GPU released once an exec is fully enqueued), without and with graphs
CLOCKWORK_CUDA_GATE=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --json $OUT/exec_gate.json 2>&1 | tee $OUT/exec_gate.log
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --json $OUT/exec_gate_graphs.json 2>&1 | tee $OUT/exec_gate_graphs.log
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check_gate_graphs.json 2>&1 | tee $OUT/check_gate_graphs.log
step check-model
cw check-model $BD/zoo/resnet50 --runs 20 2>&1 | tee $OUT/check_model.log
step loadweights
python3 tools/bench/gpu_loadweights.py --zoo $BD/zoo --json $OUT/load.json 2>&1 | tee $OUT/load.log
step torch
python3 tools/bench/gpu_vs_torch.py --zoo $BD/zoo $ALSO --runs $RUNS --json $OUT/torch.json 2>&1 | tee $OUT/torch.log
if grep -q '"conv": "cudnn"' $BD/zoo/resnet50/model.json; then
step cudnn
python3 tools/bench/gpu_cudnn.py --zoo $BD/zoo --runs $RUNS --kernels --json $OUT/cudnn.json 2>&1 | tee $OUT/cudnn.log
fi
step graphs
python3 tools/bench/gpu_graphs.py --zoo $BD/zoo --runs $RUNS --json $OUT/graphs.json 2>&1 | tee $OUT/graphs.log
fi
if [ "$PART" != bench ]; then
for G in 0 1; do      # the worker without, then with CUDA graphs
export CLOCKWORK_CUDA_GRAPHS=$G
step e2e graphs=$G
python3 tools/bench/gpu_e2e.py --zoo $BD/zoo --model resnet50 --duration $DUR --out /tmp/e2e$G
cp /tmp/e2e$G/e2e.json $OUT/e2e_graphs$G.json; tail -n 30 /tmp/e2e$G/worker.log > $OUT/e2e_worker_tail_graphs$G.log
step e2e churn graphs=$G
# 16 ResNet-50 copies (fp16: 4 pages each) in a 16-page weights cache: 4 fit at once
python3 tools/bench/gpu_e2e.py --zoo $BD/zoo --model resnet50 --workload poisson-open-loop --args "16 400" --duration $DUR --weights-cache 256MiB --out /tmp/e2e_churn$G
cp /tmp/e2e_churn$G/e2e.json $OUT/e2e_churn_graphs$G.json; tail -n 30 /tmp/e2e_churn$G/worker.log > $OUT/e2e_churn_worker_tail_graphs$G.log
done
unset CLOCKWORK_CUDA_GRAPHS
fi
step done
