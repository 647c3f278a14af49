#!/usr/bin/env bash
# Convs served by cuDNN (issue 11), third device call: the library's graph-API mode
# (CLOCKWORK_CUDNN_MODE=graph) beside the legacy fused mode: ResNet-50 direct and graph exec,
# the plans, and correctness of every model through the runtime in graph-API mode, direct
# calls and with gate + graphs. Results in $OUT/results.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/out}; R=/tmp/results; mkdir -p "$OUT" $R
RUNS=${1:-200}; INF=${2:-30}
B=.bundle/clockwork-worker
BD=$PWD/$B
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step setup
bash $B/setup.sh || exit 1
source $B/env.sh
step modes
python3 tools/bench/gpu_cudnn.py --zoo $BD/zoo --runs $RUNS --modes graph,fused --json $R/cudnn_modes.json 2>&1 | tee $R/cudnn_modes.log
step correctness graph-API mode, direct
CLOCKWORK_CUDNN_MODE=graph CLOCKWORK_CUDA_GATE=0 CLOCKWORK_CUDA_GRAPHS=0 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $R/check_graphapi_direct.json 2>&1 | tee $R/check_graphapi_direct.log
step correctness graph-API mode, gate + graphs
CLOCKWORK_CUDNN_MODE=graph CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $R/check_graphapi.json 2>&1 | tee $R/check_graphapi.log
step exec graph-API mode, gate + graphs
CLOCKWORK_CUDNN_MODE=graph CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models mlp,tinycnn,resnet18,resnet34,resnet50,resnet101 --runs $RUNS --toml $R/h200_profiles_graphapi.toml --json $R/exec_graphapi.json 2>&1 | tee $R/exec_graphapi.log
step done
