"""Installs the `clockwork` package and the `cw` command."""
from setuptools import find_packages, setup

setup(
    name="clockwork",
    version="0.1.0",
    description="Predictable multi-tenant DNN inference serving (a Python Clockwork)",
    packages=find_packages(include=["clockwork", "clockwork.*"]),
    package_data={"clockwork": ["conf/*.toml", "conf/profiles/*.toml"]},   # defaults and device profiles
    python_requires=">=3.10",
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
        "plot": ["matplotlib>=3.6"],   # `cw plot` only; imported lazily
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17"],   # `cw zoo import`; ORT scales the light zoo's seeded weights
        # `cw frontend` (KServe v2 HTTP + gRPC): an httptools Protocol and grpc.aio on uvloop, chosen by
        # measurement (BENCHMARKS.md); tritonclient ships the gRPC service's generated code
        # (and is the real client the front end's tests use: tools/test.sh installs this extra)
        "frontend": ["httptools>=0.6", "uvloop>=0.17", "grpcio>=1.60", "tritonclient[http,grpc]>=2.40"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "matplotlib>=3.6",
                 "onnx>=1.16", "onnxruntime>=1.17"],   # onnxruntime: numerical oracle for imported models
        "bench": ["py-spy>=0.3"],      # tools/bench/controller_cost.py --py-spy (sampling profiler)
    },
    entry_points={"console_scripts": ["cw=clockwork.cli:main"]},
)
