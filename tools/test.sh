#!/usr/bin/env bash
# Install the package with its test dependencies, then run the whole test suite.
# (README Quick start, second command; .ci/run calls this.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
exec python3 -m pytest -q -p no:cacheprovider tests "$@"
