#!/usr/bin/env bash
# Issue 15 in one device call: one `cw worker --backend cuda` over every GPU of the host.
#   1. cw profile check (all GPUs), cw check-model and gpu_check.py on each GPU alone (CUDA_VISIBLE_DEVICES),
#      then gpu_multi_load.py: one model loaded on all GPUs at once, outputs compared across GPUs
#   2. LoadWeights to all GPUs at once beside the pinned-copy limit per GPU and all at once
#   3. e2e: resnet50 copies on every GPU, poisson-open-loop at 50% / 90% of the combined
#      batch-16 capacity, and with weights churn; then 1 GPU at 90% for the scaling ratio
#   4. the azure workload (4,026 instances) for 60 s at 0.5x / 1x on the GPUs, then on an emulated
#      worker with as many GPUs
# Usage (device, after the bundle's setup as in h200_run.sh):
#   bash tools/bench/multi_gpu.sh [DURATION_S]
# Without a GPU (checks the driving code; every worker emulated, the per-GPU checks skipped):
#   cw zoo emulated -o /tmp/zoo && EMULATE=2 ZOO=/tmp/zoo AZ_MEM=1 AZ_DUR=10 bash tools/bench/multi_gpu.sh 5
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DUR=${1:-30}
EMULATE=${EMULATE:-0}
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
if [ "$EMULATE" = 0 ]; then
    B=.bundle/clockwork-worker
    bash $B/setup.sh || exit 1
    source $B/env.sh
    ZOO=${ZOO:-$PWD/$B/zoo}
    G=$(nvidia-smi -L | wc -l)
    nvidia-smi --query-gpu=index,name,pci.bus_id,clocks.sm,clocks.max.sm --format=csv
    nvidia-smi topo -m > $OUT/topo.txt 2>&1
    DEV=(); LOADB=(--backend cuda)
else
    ZOO=${ZOO:?ZOO=dir of emulated models}; G=$EMULATE
    DEV=(--emulate $G); LOADB=(--backend emulated --gpus $G)
fi
echo "GPUs: $G  zoo: $ZOO"
if [ "$EMULATE" = 0 ]; then
    step "profile check (NVML: every GPU of the host)"
    cw profile check 2>&1 | tee $OUT/profile_check.log
    for i in $(seq 0 $((G - 1))); do
        step "GPU $i alone: check-model, correctness"
        CUDA_VISIBLE_DEVICES=$i cw check-model $ZOO/resnet50 --runs 20 > $OUT/check_model_gpu$i.log 2>&1
        CUDA_VISIBLE_DEVICES=$i python3 tools/bench/gpu_check.py --zoo $ZOO --infers 30 --json $OUT/check_gpu$i.json > $OUT/check_gpu$i.log 2>&1
        tail -n 3 $OUT/check_gpu$i.log
    done
fi
step "all GPUs at once: LoadWeights and outputs"
python3 tools/bench/gpu_multi_load.py "${LOADB[@]}" --zoo $ZOO --json $OUT/multi_load.json 2>&1 | tee $OUT/multi_load.log
# combined batch-16 capacity (requests/s) from the model's profiled b16 exec
CAP1=$(python3 -c "import json,sys; m=json.load(open('$ZOO/resnet50/measurements.json')); print(16e9/int(m['exec_ns']['16']))")
e2e() {   # name gpus fraction-of-capacity copies [extra gpu_e2e args]
    local name=$1 g=$2 f=$3 n=$4; shift 4
    local rate; rate=$(python3 -c "print(round($f*$g*$CAP1))")
    # one Python client sends a few thousand r/s: split copies and rate over several
    local c; c=$(python3 -c "print(max(1, min($n, round($rate / ${RATE_PER_CLIENT:-3000}))))")
    local dev=("${DEV[@]}"); [ "$EMULATE" != 0 ] && dev=(--emulate $g)
    step "e2e $name: $g GPUs, $n copies, $rate r/s from $c clients"
    (cd tools/bench && CUDA_VISIBLE_DEVICES=${VIS:-} python3 gpu_e2e.py "${dev[@]}" --zoo $ZOO --model resnet50 \
        --workload poisson-open-loop --clients $c --args "$((n / c)) $((rate / c))" --duration $DUR \
        --out /tmp/e2e_$name "$@") > $OUT/e2e_$name.log 2>&1
    cp /tmp/e2e_$name/e2e.json $OUT/e2e_$name.json; grep -E "success_pct|latency_p|action_too_late" $OUT/e2e_$name.json
}
ALL=$(seq -s, 0 $((G - 1)))
VIS=$ALL e2e g${G}_50 $G 0.5 $((4 * G))
VIS=$ALL e2e g${G}_90 $G 0.9 $((4 * G))
# churn: 4 x G fp16 copies (4 pages each) in 16 pages per GPU = twice what fits
VIS=$ALL e2e g${G}_churn $G 0.5 $((8 * G)) --weights-cache 256MiB
VIS=0 e2e g1_90 1 0.9 4
python3 - "$OUT" $G <<'PY'
import json, sys
out, g = sys.argv[1], int(sys.argv[2])
one = json.load(open(f"{out}/e2e_g1_90.json")); many = json.load(open(f"{out}/e2e_g{g}_90.json"))
r = (many["succeeded"] / one["succeeded"]) / g if one.get("succeeded") else 0
print(f"scaling at 90%: successes on {g} GPUs / ({g} x on 1) = {r:.3f}")
json.dump({"gpus": g, "scaling": r}, open(f"{out}/scaling.json", "w"))
PY
# the Azure trace (synthesised: no internet on the device) on all GPUs, then the same run on an
# emulated worker with as many GPUs; same tool, same figures, side by side
cw trace synth /tmp/azure-trace > $OUT/trace_synth.log 2>&1 || { echo "cw trace synth failed"; tail $OUT/trace_synth.log; }
for L in 0.5 1; do
    AZ="--no-inputs --num_workers=1 --load_factor=$L --memory_load_factor=${AZ_MEM:-4} --interval=60 --trace_dir=/tmp/azure-trace --use_all_models=1"
    for MODE in real emulated; do
        [ "$MODE" = real ] && [ "$EMULATE" != 0 ] && continue
        dev=("${DEV[@]}"); [ "$MODE" = emulated ] && dev=(--emulate $G)
        step "azure ${L}x on $G GPUs ($MODE)"
        (cd tools/bench && CUDA_VISIBLE_DEVICES=$ALL python3 gpu_e2e.py "${dev[@]}" --zoo $ZOO --workload azure \
            --args "$AZ" --duration ${AZ_DUR:-60} --weights-cache ${AZ_CACHE:-100GiB} --out /tmp/azure_${MODE}_$L) > $OUT/azure_${MODE}_$L.log 2>&1
        cp /tmp/azure_${MODE}_$L/e2e.json $OUT/azure_${MODE}_$L.json; grep -E "success_pct|latency_p" $OUT/azure_${MODE}_$L.json
    done
done
step done
