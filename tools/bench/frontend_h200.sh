#!/usr/bin/env bash
# The front end's figures on the H200 host's CPUs (no GPU used: emulated worker), in one device
# call: the server-library comparison, then tools/bench/frontend.py (one front-end process,
# load generators in 8 processes, concurrency 1..256, 3 short runs per point). Needs pyzmq and
# msgspec wheels in WHL1 and tritonclient + its missing dependencies (and httptools) in WHL2.
# Usage (device, from the repo root): bash tools/bench/frontend_h200.sh WHL1 WHL2
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$1"/*.whl "$2"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ date; nproc; python3 --version; grep -m1 "model name" /proc/cpuinfo; cat /proc/loadavg
  python3 -c "import grpc, httptools, uvloop, aiohttp, zmq, msgspec, tritonclient.http.aio, tritonclient.grpc.aio; print('grpc', grpc.__version__, 'httptools', httptools.__version__, 'uvloop', uvloop.__version__, 'aiohttp', aiohttp.__version__, 'pyzmq', zmq.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python3 tools/bench/frontend.py --concurrency 1,4,16,64,256 --duration 0.8 --setup 0.7 --repeat 3 \
    --clients 8 --json "$OUT/frontend.json" 2>&1 | tee "$OUT/frontend.txt"
cat /proc/loadavg >> "$OUT/env.txt"
python3 tools/bench/frontend_libs.py --requests 4000 --only aiohttp,httptools,grpc-uvloop,grpc-sync \
    2>&1 | tee "$OUT/libs.txt"
