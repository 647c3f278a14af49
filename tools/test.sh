#!/usr/bin/env bash
# Install the package with its test dependencies, then run the whole test suite.
# (README Quick start, second command; .ci/run calls this.)
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/test_top_tmux.py drives `cw top` in a real terminal: it needs tmux (best effort, else it skips)
command -v tmux >/dev/null || { command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
    && apt-get update -qq && apt-get install -y -qq tmux >/dev/null; } \
    || echo "tmux not installed: tests/test_top_tmux.py will skip"
# the TVM extra runs the real model path on the CPU (tests/test_tvm_cpu.py); the frontend extra
# brings `cw frontend`'s servers and tritonclient, the real client of tests/test_frontend.py
python3 -m pip install -q -e '.[test,tvm,frontend]'
exec python3 -m pytest -q -p no:cacheprovider tests "$@"
