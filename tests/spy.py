"""Watching a scheduler's methods in tests without patching the scheduler itself: in the opt-in
compiled build (docs/compiled.md) its class is a C extension type whose methods cannot be
replaced, so a test puts this wrapper where the caller looks the scheduler up instead."""


class Spy:
    """Calls `calls[name]` for the methods given, everything else on `inner`."""

    def __init__(self, inner, **calls):
        self._inner = inner
        self.__dict__.update(calls)

    def __getattr__(self, name):
        return getattr(self._inner, name)
