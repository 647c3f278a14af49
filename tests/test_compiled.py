"""The opt-in compiled build (docs/compiled.md) leaves the pure-Python default alone: the modules
setup.py compiles exist, and without mypy installed the modules that name mypyc's decorator
still import and behave as plain Python."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


def compiled_list() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "COMPILED")


def test_every_compiled_module_exists():
    listed = compiled_list()
    assert listed and len(set(listed)) == len(listed)
    assert [p for p in listed if not (ROOT / p).is_file()] == []


def test_without_mypy_the_scheduler_base_is_plain_python():
    """mypy_extensions (mypy's) blocked: scheduler.py falls back to a no-op decorator, and a
    policy subclass overrides as before."""
    code = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mypy_extensions":
            raise ImportError("blocked")
sys.meta_path.insert(0, Blocker())
from clockwork.controller.scheduler import Scheduler
class P(Scheduler):
    name = "p"
    def tick(self):
        return 7
p = P({}, lambda: 0, None)
print(P.name, Scheduler.name, p.tick(), Scheduler({}, lambda: 0, None).tick())
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["p", "base", "7", "None"]
