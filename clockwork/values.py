"""Typed values with ranges: one check for config keys, command-line flags and workload arguments.

A `Spec` says what a value may be (int, float, str or bool; a range; choices). The config loader
checks every key of clockwork/conf/default.toml and CLOCKWORK_CONFIG_FILE against config.SCHEMA, flags
use `Spec.click()` as their click type (flags that override a config key take that key's spec,
`config.flag_type(section, key)`), and workload parameters parse their text with the same
`Spec.parse`, so a port, a timeout or a rate is refused the same way, with the same words,
wherever it comes from, and before anything starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import click

def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


@dataclass(frozen=True)
class Spec:
    """What one value may be. lo/hi bound numbers (lo excluded when lo_open); numbers are
    always finite (no nan, no inf); choices, when given, list every allowed value."""
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        """'an integer 1..65535', 'a number > 0', 'one of a/b' ..."""
        if self.choices:
            return "one of " + "/".join(map(str, self.choices))
        text = _KIND_NAMES[self.kind]
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            return f"{text} {_num(self.lo)}..{_num(self.hi)}"
        if self.lo is not None:
            text += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            text += f"{' and' if self.lo is not None else ''} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return text

    def check(self, value: Any) -> Any:
        """A typed value (from TOML or code) -> the value as `kind`; ValueError saying what is
        expected otherwise."""
        kind = self.kind
        ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        if kind is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"must be {self.describe()} (finite), got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        if kind in (int, float):
            below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
            above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
            if below or above:
                raise ValueError(f"must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: Any) -> Any:
        """Text (a flag or a workload argument) -> a checked value."""
        if not isinstance(text, str):
            return self.check(text)
        t = text.strip()
        try:
            if self.kind is int:
                value = int(t)
            elif self.kind is float:
                value = float(t)
            elif self.kind is bool:
                if t.lower() not in _TRUE + _FALSE:
                    raise ValueError
                value = t.lower() in _TRUE
            else:
                value = text
        except ValueError:
            raise ValueError(f"must be {self.describe()}, got {text!r}") from None
        return self.check(value)

    def click(self, metavar: str | None = None):
        """This spec as a click parameter type."""
        return SpecType(self, metavar)


class SpecType(click.ParamType):
    """click parameter type for a Spec: the flag's text is parsed and checked by the spec."""

    def __init__(self, spec: Spec, metavar: str | None = None):
        self.spec = spec
        self.name = metavar or {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}[spec.kind]

    def convert(self, value, param, ctx):
        try:
            return self.spec.parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


PORT = Spec(int, 1, 65535)
PORT_OR_OFF = Spec(int, 0, 65535)            # 0: that listener is off
POSITIVE = Spec(float, 0, lo_open=True)
NON_NEGATIVE = Spec(float, 0)
POSITIVE_INT = Spec(int, 1)
NON_NEGATIVE_INT = Spec(int, 0)
