"""The named workloads and their parameters, so `cw client --help` can list them and the
command line can fill them, positionally (as the original's `client ADDR slo-exp-1 resnet50 4
poisson 100 2 32 2 mul 7`) or by name (`--copies 4 --rate 100`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...values import Spec


class ParamError(ValueError):
    """Bad workload arguments; the message says which and what is expected."""


_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


@dataclass(frozen=True)
class Param:
    """One workload argument. Numbers are finite and >= 0 (no workload takes a negative count,
    rate or time); `positive` ones must be > 0 (a rate, period or concurrency of 0 would stall)."""
    name: str
    type: type
    default: Any = None            # None: required
    help: str = ""
    choices: tuple = ()
    positive: bool = False

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def spec(self) -> Spec:
        if self.type in (int, float):
            return Spec(self.type, 0, lo_open=self.positive, choices=self.choices)
        return Spec(self.type, choices=self.choices)

    def parse(self, text: str):
        """Checked here, before any model is loaded."""
        try:
            return self.spec.parse(text)
        except ValueError as e:
            raise ParamError(f"{self.name}: {e}") from None

    def usage(self) -> str:
        d = "required" if self.required else f"default {self.default}"
        c = f"; one of {'/'.join(map(str, self.choices))}" if self.choices else ""
        return f"{self.name} ({_TYPE_NAMES[self.type]}, {d}{c}): {self.help}"


@dataclass
class WorkloadSpec:
    name: str
    fn: Callable
    help: str
    params: list[Param] = field(default_factory=list)

    def parse(self, args: list[str]) -> dict[str, Any]:
        """Positional values in declaration order, and/or --name value / --name=value
        (dashes and underscores are interchangeable in names)."""
        by_name = {p.name.replace("_", "-"): p for p in self.params}
        values: dict[str, Any] = {}
        positional = []
        i = 0
        while i < len(args):
            a = args[i]
            if a.startswith("--") and len(a) > 2:
                key, eq, val = a[2:].partition("=")
                p = by_name.get(key.replace("_", "-"))
                if p is None:
                    raise ParamError(f"workload {self.name} has no parameter --{key} "
                                     f"(it takes: {', '.join(by_name) or 'none'})")
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise ParamError(f"--{key} needs a value")
                    val = args[i]
                values[p.name] = p.parse(val)
            else:
                positional.append(a)
            i += 1
        if len(positional) > len(self.params):
            raise ParamError(f"workload {self.name} takes at most {len(self.params)} arguments, "
                             f"got {len(positional)}: {' '.join(positional)}")
        for p, text in zip(self.params, positional):
            if p.name in values:
                raise ParamError(f"{p.name} given both positionally and by name")
            values[p.name] = p.parse(text)
        missing = [p.name for p in self.params if p.required and p.name not in values]
        if missing:
            raise ParamError(f"workload {self.name} needs: {', '.join(missing)}\n{self.usage()}")
        for p in self.params:
            values.setdefault(p.name, p.default)
        return values

    def usage(self) -> str:
        head = f"{self.name} " + " ".join(p.name if p.required else f"[{p.name}]" for p in self.params)
        lines = [head.rstrip(), f"    {self.help}"]
        lines += [f"      {p.usage()}" for p in self.params]
        return "\n".join(lines)


REGISTRY: dict[str, WorkloadSpec] = {}


def workload(name: str, help: str, *params: Param):
    """Register fn(engine, **params) as the workload `name`."""
    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"workload {name} registered twice")
        REGISTRY[name] = WorkloadSpec(name, fn, help, list(params))
        return fn
    return deco
