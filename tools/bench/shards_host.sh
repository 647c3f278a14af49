#!/usr/bin/env bash
# The sharded controller's figures on a many-core host (BENCHMARKS.md, "Sharded controller"):
# what one client process offers through 1 and 4 connections, then the controller at 256
# emulated GPUs and 4,096 instances with 1, 4 and 8 shards. About 5 minutes on 16 cores.
#
#   bash tools/bench/shards_host.sh OUT_DIR
set -u
out=${1:-.}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
echo "# $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" | tee "$out/shards.txt"
for k in 1 4; do
    echo "== client_rate.py --shards $k" | tee -a "$out/shards.txt"
    $py tools/bench/client_rate.py --instances 4096 --rates 12500,25000 --duration 3 --shards $k 2>&1 | tee -a "$out/shards.txt"
done
cost="tools/bench/controller_cost.py --gpus 256 --copies 4096 --seconds 3 --clients 8 --threads"
for args in "--workers 4 --shards 1 --rates 20000,40000" \
            "--workers 4 --shards 4 --rates 40000,70000,100000" \
            "--workers 8 --shards 8 --rates 70000,100000,130000"; do
    echo "== controller_cost.py $args" | tee -a "$out/shards.txt"
    timeout 300 $py $cost $args 2>&1 | tee -a "$out/shards.txt"
done
