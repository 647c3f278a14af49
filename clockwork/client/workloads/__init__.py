"""The original's client workloads, by name. Importing this package registers every workload:
basic, experiments and azure_replay each register theirs into registry.REGISTRY (in the order
`cw client --help` lists them); registry.py itself imports no workload, so no module imports its
own importer.
"""
from __future__ import annotations

from . import basic, experiments, azure_replay  # noqa: F401,I001  (order: the listing's)
from .registry import REGISTRY, ParamError, WorkloadSpec


def get(name: str) -> WorkloadSpec:
    if name not in REGISTRY:
        raise ParamError(f"unknown workload {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def all_workloads() -> dict[str, WorkloadSpec]:
    return REGISTRY
