#!/usr/bin/env bash
# Convs served by cuDNN (issue 11), one device call: the `--conv cudnn` zoo (bundle zoo/) beside
# ResNet-50 with TVM convs (bundle zoo_alt/, optional) and PyTorch: correctness (direct, and with
# exec gate + CUDA graphs), the library's modes and where GPU time goes, ours/anchor, exec per
# model (measurements for conf/profiles/h200.toml), LoadWeights. Results go to $OUT.
# Usage (device): bash tools/bench/h200_cudnn.sh [RUNS] [INFERS]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=${1:-200}; INF=${2:-50}
B=.bundle/clockwork-worker
BD=$PWD/$B
MODELS=mlp,tinycnn,resnet18,resnet34,resnet50,resnet101
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step setup
bash $B/setup.sh || exit 1
source $B/env.sh
ALSO=""
if [ -d $B/zoo_alt ]; then python3 -m clockwork.model.build weights $B/zoo_alt/*/ && ALSO="--also $BD/zoo_alt"; fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "from clockwork.model import tvm_runtime as t, cudnn_conv as c; t.import_tvm(cuda=True); print(c.load())" 2>&1 | tee $OUT/cudnn_load.log
step correctness
python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check.json 2>&1 | tee $OUT/check.log
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_check.py --zoo $BD/zoo --infers $INF --json $OUT/check_gate_graphs.json 2>&1 | tee $OUT/check_gate_graphs.log
step cudnn-modes
python3 tools/bench/gpu_cudnn.py --zoo $BD/zoo --runs $RUNS --kernels --json $OUT/cudnn.json 2>&1 | tee $OUT/cudnn.log
step torch
python3 tools/bench/gpu_vs_torch.py --zoo $BD/zoo $ALSO --runs $RUNS --json $OUT/torch.json 2>&1 | tee $OUT/torch.log
step exec
python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --write --toml $OUT/h200_profiles.toml --json $OUT/exec.json 2>&1 | tee $OUT/exec.log
CLOCKWORK_CUDA_GATE=1 CLOCKWORK_CUDA_GRAPHS=1 python3 tools/bench/gpu_exec.py --zoo $BD/zoo --models $MODELS --runs $RUNS --json $OUT/exec_gate_graphs.json 2>&1 | tee $OUT/exec_gate_graphs.log
step loadweights
python3 tools/bench/gpu_loadweights.py --zoo $BD/zoo --json $OUT/load.json 2>&1 | tee $OUT/load.log
step done
