#!/usr/bin/env bash
# Build (or remove) the opt-in compiled hot path: the modules listed in setup.py's COMPILED,
# compiled with mypyc into C extensions placed beside their .py files (docs/compiled.md).
# Python imports an extension in preference to the .py of the same name, so the tree then runs
# compiled; --clean removes the extensions and the tree is pure Python again.
#
#   tools/build_compiled.sh [--clean] [TREE] [PYTHON]
#     TREE    a clockwork source tree (default: this one)
#     PYTHON  the interpreter that will run the tree, with mypy installed (default: python3);
#             the extensions only load in that Python version
set -euo pipefail
clean=0
if [ "${1:-}" = "--clean" ]; then clean=1; shift; fi
tree="${1:-$(dirname "$0")/..}"
py="${2:-python3}"
die() { echo "build_compiled: $*" >&2; exit 1; }

[ -f "$tree/setup.py" ] && [ -d "$tree/clockwork" ] || die "$tree is not a clockwork source tree (no setup.py and clockwork/)"
tree="$(cd "$tree" && pwd)"
# the extensions: clockwork/**/NAME.cpython-*.so beside NAME.py, and mypyc's shared library at the root
remove() { find "$tree/clockwork" -name '*.so' -delete; rm -f "$tree"/*__mypyc*.so; rm -rf "$tree/build/compiled"; }
if [ "$clean" = 1 ]; then remove; echo "build_compiled: removed the compiled modules from $tree"; exit 0; fi

command -v "$py" >/dev/null || die "no interpreter '$py'"
# (setuptools first: from Python 3.12 on, mypyc's build needs the distutils setuptools provides)
"$py" -c 'import setuptools' 2>/dev/null \
    || die "$py has no setuptools: install it with '$py -m pip install setuptools'"
"$py" -c 'import setuptools, mypyc.build' 2>/dev/null \
    || die "$py has no mypy (mypyc): install it with '$py -m pip install mypy' or the 'compiled' extra"
"$py" -c 'import sysconfig, os, sys; h = sysconfig.get_paths()["include"]; sys.exit(not os.path.exists(os.path.join(h, "Python.h")))' \
    || die "$py has no C headers (Python.h): install its development package"
command -v "${CC:-cc}" >/dev/null || die "no C compiler (${CC:-cc}): install gcc or set CC"

remove; mkdir -p "$tree/build"
echo "build_compiled: compiling with $("$py" --version 2>&1) in $tree (a minute or two)"
(cd "$tree" && CLOCKWORK_COMPILE=1 "$py" setup.py -q build_ext --inplace \
    --build-temp build/compiled/temp --build-lib build/compiled/lib >build/compiled.log 2>&1) \
    || { tail -30 "$tree/build/compiled.log" >&2; die "compiling failed (whole log: $tree/build/compiled.log)"; }
# every listed module must now load from its extension (where PYTHON has clockwork's dependencies)
(cd "$tree" && PYTHONPATH="$tree" "$py" - <<'PY'
import ast, importlib, sys
tree = ast.parse(open("setup.py").read())
listed = next(ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "COMPILED")
names = [p[:-3].replace("/", ".") for p in listed]
for name in names:
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name.startswith("clockwork"):
            raise
        sys.exit(print(f"build_compiled: {len(names)} modules built, not loaded: this Python lacks {e.name} "
                       "(a dependency of clockwork)"))
    if not mod.__file__.endswith(".so"):
        sys.exit(f"build_compiled: {name} still loads from {mod.__file__}")
print(f"build_compiled: {len(names)} modules compiled: {', '.join(names)}")
PY
)
