#!/bin/bash
# The opt-in compiled build (docs/compiled.md) against pure Python, interleaved, on one host:
# the controller's Python in simulated time (controller_python.py), `cw simulate` speed, then
# overhead at concurrency 1 and controller_cost.py as real processes (overhead_compare.sh with
# PURE as base and COMPILED as new). Output in OUT_DIR.
#
#   bash tools/bench/compiled_compare.sh PURE_TREE COMPILED_TREE [ROUNDS] [OUT_DIR]
#
# PURE_TREE and COMPILED_TREE hold the same sources; COMPILED_TREE was built with
# tools/build_compiled.sh for this host's Python version (the extensions load only there).
# COST="--gpus 64 ..." sets controller_cost.py's arguments, as in overhead_compare.sh.
set -u
PURE=$(cd "$1" && pwd); COMP=$(cd "$2" && pwd); ROUNDS=${3:-3}; OUT=${4:-compiled-compare}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
run() { local tree=$1; shift; (cd "$tree" && PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" python3 "$@"); }
for t in "$PURE" "$COMP"; do
  echo "$t: $(run "$t" -c 'import clockwork.controller.schedulers.infer4 as m; print(m.__file__)')"
done 2>&1 | tee "$OUT/which.txt"
grep -q '\.so$' <(tail -1 "$OUT/which.txt") || { echo "compiled_compare: $COMP does not load its compiled modules" >&2; exit 1; }
for r in $(seq "$ROUNDS"); do
  for t in "$PURE" "$COMP"; do
    echo "## $t"
    run "$t" tools/bench/controller_python.py --gpus 64 --copies 256 --rate 10000 --repeats 3
    run "$t" tools/bench/simulate.py point --gpus 6 --duration 10 poisson-open-loop 2000 1356
  done
done 2>&1 | tee "$OUT/python.txt"
bash "$HERE/overhead_compare.sh" "$PURE" "$COMP" "$ROUNDS" "$OUT"
