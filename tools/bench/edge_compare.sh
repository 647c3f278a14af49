#!/bin/bash
# Real-process controller cost of several trees, interleaved round by round (e.g. main compiled,
# this branch compiled, this branch pure: docs/compiled.md), one part at a time so that each
# part fits in one device call. Output in OUT_DIR/PART.txt; which modules each tree loads
# compiled in OUT_DIR/which.txt.
#
#   bash tools/bench/edge_compare.sh PART OUT_DIR TREE...
#
#   shards    256 GPUs, 4,096 copies, 8 shards, 8 worker processes, 3 clients, 100,000 r/s, 3 s
#   gpus64    64 GPUs, 256 copies, one controller, 4 clients, 10,000 / 20,000 / 30,000 r/s, 3 s
#   overhead  overhead.py at concurrency 1 ($REQUESTS requests, default 1500), and the
#             controller in simulated time (controller_python.py, 64 GPUs at 10,000 r/s)
#
# ROUNDS (default 3 for shards, 2 for gpus64, 1 for overhead) rounds, each running every tree
# once in the order given. A tree built with tools/build_compiled.sh loads its extensions only
# in the Python version it was built for. Python packages may come from $PYTHONPATH.
set -u
PART=$1; OUT=$2; shift 2
mkdir -p "$OUT"
run() { local tree=$1; shift; (cd "$tree" && PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" python3 "$@"); }
{ date -u; nproc; python3 --version; uptime
  for t in "$@"; do
    echo "$t: $(run "$t" -c 'import importlib.util as u
print(*[(u.find_spec(m) or "absent") and getattr(u.find_spec(m), "origin", "absent") for m in
        ("clockwork.controller.schedulers.infer4", "clockwork.controller.requests")])' 2>&1)"
  done; } 2>&1 | tee -a "$OUT/which.txt"
case "$PART" in
  shards) ROUNDS=${ROUNDS:-3}
    ARGS="--gpus 256 --copies 4096 --seconds 3 --threads --shards 8 --workers 8 --clients 3 --rates 100000" ;;
  gpus64) ROUNDS=${ROUNDS:-2}
    ARGS="--gpus 64 --copies 256 --rates 10000,20000,30000 --seconds 3 --clients 4 --threads" ;;
  overhead) ROUNDS=${ROUNDS:-1} ;;
  *) echo "edge_compare: PART is shards, gpus64 or overhead, not '$PART'" >&2; exit 2 ;;
esac
for r in $(seq "$ROUNDS"); do
  for t in "$@"; do
    echo "## round $r: $t ($(uptime | sed 's/.*load/load/'))"
    if [ "$PART" = overhead ]; then
      run "$t" tools/bench/overhead.py --requests "${REQUESTS:-1500}"
      run "$t" tools/bench/controller_python.py --gpus 64 --copies 256 --rate 10000 --repeats 3
    else
      run "$t" tools/bench/controller_cost.py $ARGS
    fi
  done
done 2>&1 | tee "$OUT/$PART.txt"
