"""The test suite's own rules that code can check: no test asserts a wall-clock time (times depend on the machine
and its load; they belong in benchmarks/, which report them)."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time", "time_ns"}


def _is_clock_call(node: ast.AST) -> bool:
    """time.<clock>() or a bare perf_counter() etc."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr in CLOCKS and getattr(f.value, "id", None) == "time"
    return isinstance(f, ast.Name) and f.id in CLOCKS - {"time"}


def _is_timing(node: ast.AST, timed: set[str]) -> bool:
    """A clock reading, a name holding one, or arithmetic on them (time.perf_counter() - t0)."""
    if isinstance(node, ast.BinOp):
        return _is_timing(node.left, timed) or _is_timing(node.right, timed)
    return _is_clock_call(node) or (isinstance(node, ast.Name) and node.id in timed)


def wall_clock_assertions(source: str) -> list[int]:
    """Line numbers of the assertions in `source` that compare a timing (a clock reading, a name assigned one,
    or arithmetic on them) with anything."""
    tree = ast.parse(source)
    timed: set[str] = set()
    for _ in range(2):   # names assigned from names assigned from clocks
        timed |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and _is_timing(n.value, timed)
                  for t in n.targets if isinstance(t, ast.Name)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)
            and any(_is_timing(side, timed) for cmp in ast.walk(n.test) if isinstance(cmp, ast.Compare)
                    for side in (cmp.left, *cmp.comparators))]


def test_no_test_asserts_a_wall_clock_time():
    found = {p.name: lines for p in sorted(HERE.glob("test_*.py")) if (lines := wall_clock_assertions(p.read_text()))}
    assert not found, f"wall-clock assertions (file: lines): {found}; time it in benchmarks/ instead"


def test_the_rule_sees_wall_clock_assertions():
    assert wall_clock_assertions("import time\nt = time.perf_counter()\nf()\nassert time.perf_counter() - t < 60\n")
    assert wall_clock_assertions("import time\nt0 = time.time()\nf()\nelapsed = time.time() - t0\nassert elapsed < 1\n")
    assert not wall_clock_assertions("import time\nlock = {'time': time.time()}\nassert f(lock)\n")
