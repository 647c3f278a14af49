"""Installs the `clockwork` package and the `cw` command.

CLOCKWORK_COMPILE=1 (with mypy installed: the `compiled` extra) also compiles the per-request
modules in COMPILED with mypyc into C extensions that load in place of their .py files
(docs/compiled.md; tools/build_compiled.sh builds them in place). Without it: pure Python.
"""
import os

from setuptools import find_packages, setup

# The per-request path: the scheduler, the edge and the worker runtime (docs/compiled.md says
# what each gains and why the others are left out)
COMPILED = [
    "clockwork/controller/schedulers/infer4.py",
    "clockwork/controller/schedulers/batching.py",
    "clockwork/controller/schedulers/estimates.py",
    "clockwork/controller/schedulers/load_planning.py",
    "clockwork/controller/scheduler.py",
    "clockwork/controller/requests.py",
    "clockwork/controller/replies.py",
    "clockwork/controller/actions.py",
    "clockwork/controller/queuewait.py",
    "clockwork/transport/clocksync.py",
    "clockwork/id_ranges.py",
    "clockwork/worker/runtime.py",
    "clockwork/worker/executor.py",
    "clockwork/worker/memory.py",
    "clockwork/sim/events.py",
    "clockwork/sim/network.py",
]


def compiled_extensions() -> list:
    if os.environ.get("CLOCKWORK_COMPILE", "0") in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit("CLOCKWORK_COMPILE=1 needs mypy (pip install mypy, or the 'compiled' extra)")
    # mypy checks only the listed modules (their imports are read, not checked)
    return mypycify(["--follow-imports=silent", "--ignore-missing-imports",
                     "--disable-error-code=annotation-unchecked"] + COMPILED, opt_level=os.environ.get("CLOCKWORK_COMPILE_OPT", "3"))


setup(
    name="clockwork",
    version="0.1.0",
    description="Predictable multi-tenant DNN inference serving (a Python Clockwork)",
    packages=find_packages(include=["clockwork", "clockwork.*"]),
    package_data={"clockwork": ["conf/*.toml", "conf/profiles/*.toml"]},   # defaults and device profiles
    python_requires=">=3.10",
    ext_modules=compiled_extensions(),
    install_requires=[
        "pyzmq>=25",
        "msgspec>=0.18",
        "numpy>=1.24",
        "click>=8.0",
        'tomli>=2.0; python_version < "3.11"',
        "rich>=13",                  # `cw top`: live terminal tables without curses code of our own
        "prometheus-client>=0.17",   # controller /metrics endpoint (start_http_server returns the server)
    ],
    extras_require={
        "gpu": ["cuda-python>=12", "nvidia-ml-py>=12"],
        # apache-tvm-ffi pinned: 0.1.15.x (what pip picks by default) segfaults in every TVM
        # tensor-core schedule (s_tir.Tensorize -> ffi::ToJSONGraph); 0.1.14.post0 works.
        "tvm": ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0"],
        # `--conv cudnn` zoos: cuDNN 9 headers and libcudnn.so.9 to build libclockwork_cudnn.so
        # (python -m clockwork.model.cudnn_conv build; bundles), and cuDNN on a GPU host
        "cudnn": ["nvidia-cudnn-cu13>=9"],
        "plot": ["matplotlib>=3.6"],   # `cw plot` only; imported lazily
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17"],   # `cw zoo import`; ORT scales the light zoo's seeded weights
        # `cw frontend` (KServe v2 HTTP + gRPC): an httptools Protocol and grpc.aio on uvloop, chosen by
        # measurement (BENCHMARKS.md); tritonclient ships the gRPC service's generated code
        # (and is the real client the front end's tests use: tools/test.sh installs this extra)
        "frontend": ["httptools>=0.6", "uvloop>=0.17", "grpcio>=1.60", "tritonclient[http,grpc]>=2.40"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "matplotlib>=3.6",
                 "onnx>=1.16", "onnxruntime>=1.17"],   # onnxruntime: numerical oracle for imported models
        "bench": ["py-spy>=0.3"],      # tools/bench/controller_cost.py --py-spy (sampling profiler)
        # CLOCKWORK_COMPILE=1: the per-request modules compiled with mypyc (docs/compiled.md);
        # from Python 3.12 on mypyc's build imports distutils, which only setuptools provides
        "compiled": ["mypy>=1.10", 'setuptools; python_version >= "3.12"'],
    },
    entry_points={"console_scripts": ["cw=clockwork.cli:main"]},
)
