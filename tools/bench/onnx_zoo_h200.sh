#!/usr/bin/env bash
# The imported ONNX zoo on the H200 in one device call: install the worker bundle's wheels,
# regenerate the light models' seeded weights (the host has onnx and onnxruntime), then
# tools/bench/onnx_zoo.py (outputs vs onnxruntime, exec p50/p99, LoadWeights, torch beside).
# Results (JSON, TOML profiles, log) go to $OUT.
# Usage (device): [MODELS=a,b] bash tools/bench/onnx_zoo_h200.sh BUNDLE_DIR [RUNS]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=${1:-.bundle/clockwork-worker}; RUNS=${2:-100}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$B/site" "$B"/wheels/*.whl || exit 1
source "$B/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
for d in "$B"/zoo/*/; do          # one at a time: a model whose weights differ is skipped, not fatal
    python3 -m clockwork.model.build weights "$d" || echo "weights not regenerated: $d"
done
python3 tools/bench/onnx_zoo.py --zoo "$B/zoo" --runs "$RUNS" ${MODELS:+--models "$MODELS"} --json "$OUT/onnx_zoo.json" \
    --toml "$OUT/onnx_profiles.toml" 2>&1 | tee "$OUT/onnx_zoo.log"
