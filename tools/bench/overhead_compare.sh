#!/bin/bash
# Overhead at concurrency 1 before and after a change (issue 13): interleaved runs of
# overhead.py and overhead_hops.py on two checkouts, the ZeroMQ floor under each hop, and
# controller_cost.py at moderate load, each run's output kept in OUT_DIR.
#
#   bash tools/bench/overhead_compare.sh BASE_TREE NEW_TREE [ROUNDS] [OUT_DIR]
#
# BASE_TREE / NEW_TREE: checkouts (e.g. main and a branch); the tracing tools come from this
# script's checkout. ROUNDS (default 3) interleaved rounds. VARIANTS=1 adds, on NEW_TREE,
# the busy-wait and core-pinning variants (needs >= 8 cores); COST="--gpus 64 ..." sets the
# controller_cost.py arguments (default: 64 GPUs at 1,000 and 3,000 r/s, for 2 cores);
# REQUESTS (default 1500) per overhead run. Python packages may come from $PYTHONPATH.
set -u
BASE=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); ROUNDS=${3:-3}; OUT=${4:-overhead-compare}
HERE=$(cd "$(dirname "$0")" && pwd)
N=${REQUESTS:-1500}
COST=${COST:---gpus 64 --copies 256 --rates 1000,3000 --seconds 6 --threads --clients 2}
SPIN="--set controller.spin_us=100 --set client.spin_us=100 --set worker.spin_us=100"
mkdir -p "$OUT"
{ date -u; nproc; python3 --version; uptime; lscpu 2>/dev/null | grep "Model name";
  for t in "$BASE" "$NEW"; do echo "$t: $(git -C "$t" log --oneline -1 2>/dev/null || cat "$t/REV" 2>/dev/null)"; done
} 2>&1 | tee "$OUT/env.txt"
hops() { python3 "$HERE/overhead_hops.py" --requests "$N" --tree "$@"; }
for r in $(seq "$ROUNDS"); do
  uptime
  echo "## base"; hops "$BASE"
  echo "## new"; hops "$NEW"
  if [ "${VARIANTS:-0}" = 1 ]; then
    echo "## new, timer_spin_us 0"; hops "$NEW" --set worker.timer_spin_us=0
    echo "## new, all spin"; hops "$NEW" $SPIN
    echo "## new, pinned"; hops "$NEW" --pin 2,3,4
    echo "## new, pinned, all spin"; hops "$NEW" --pin 2,3,4 $SPIN
    echo "## new, pinned to pairs, all spin"; hops "$NEW" --pin 2+3,4+5,6+7 $SPIN
  fi
done 2>&1 | tee "$OUT/hops.txt"
{ python3 "$HERE/zmq_hop.py"; python3 "$HERE/zmq_hop.py" --spin-us 50
  if [ "${VARIANTS:-0}" = 1 ]; then
    python3 "$HERE/zmq_hop.py" --pin 2,3; python3 "$HERE/zmq_hop.py" --pin 2,3 --spin-us 50
  fi; } 2>&1 | tee "$OUT/zmq.txt"
for r in $(seq "$ROUNDS"); do
  echo "## base"; (cd "$BASE" && PYTHONPATH="$BASE${PYTHONPATH:+:$PYTHONPATH}" python3 tools/bench/overhead.py --requests "$N")
  echo "## new"; (cd "$NEW" && PYTHONPATH="$NEW${PYTHONPATH:+:$PYTHONPATH}" python3 tools/bench/overhead.py --requests "$N")
done 2>&1 | tee "$OUT/overhead.txt"
{ echo "## base"; (cd "$BASE" && PYTHONPATH="$BASE${PYTHONPATH:+:$PYTHONPATH}" python3 tools/bench/controller_cost.py $COST)
  echo "## new"; (cd "$NEW" && PYTHONPATH="$NEW${PYTHONPATH:+:$PYTHONPATH}" python3 tools/bench/controller_cost.py $COST)
} 2>&1 | tee "$OUT/cost.txt"
{ date -u; uptime; } | tee -a "$OUT/env.txt"
