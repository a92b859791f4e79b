"""The house rules of docs/architecture.md, kept by a test so that later work cannot undo them.

- no module over `MAX_MODULE_LINES` lines and no function over `MAX_FUNCTION_LINES`;
- a private module (`_name.py`) is imported only from inside its own package;
- only `trace_replay/` and the demo's orchestration (`controller_app/demo*`) import `trace_replay.live`
  (the live sender and sink); tests and benchmarks, which drive the demo, may too;
- no test module imports another test module: shared helpers live in `conftest.py` or `tests/helpers.py`.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controller_app", "gnn_policy", "mininet_topos", "trace_replay", "twin")
SCRIPT_DIRS = ("benchmarks", "tests")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LIVE_MODULE = "trace_replay.live"


def _python_files() -> list[Path]:
    return sorted(path for top in PACKAGES + SCRIPT_DIRS for path in (ROOT / top).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    """The dotted package a file belongs to (a package's `__init__` belongs to that package)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every module `path` imports, relative imports resolved.

    `from a.b import c` yields `a.b` and `a.b.c`: `c` may be a submodule.
    """
    package = _package_of(path).split(".")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


FILES = _python_files()
IDS = [str(path.relative_to(ROOT)) for path in FILES]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_module_and_function_sizes(path: Path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name} has over {MAX_MODULE_LINES} lines"
    long_functions = [
        f"{node.name} (line {node.lineno}, {node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source, str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_private_modules_stay_in_their_package(path: Path):
    package = _package_of(path)
    offending = []
    for line, name in _imported_modules(path):
        parts = name.split(".")
        for depth, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:depth])
                private = ".".join(parts[:depth + 1])
                if owner != package and (ROOT / Path(*parts[:depth + 1])).with_suffix(".py").exists():
                    offending.append(f"line {line}: {private}")
                break
    assert not offending, f"imports a private module of another package: {sorted(set(offending))}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_only_replay_and_the_demo_import_the_live_sender(path: Path):
    module = _module_name(path)
    allowed = (module.startswith(("trace_replay.", "controller_app.demo", "tests.", "benchmarks."))
               or module == "trace_replay")
    if allowed:
        return
    users = [line for line, name in _imported_modules(path) if name == LIVE_MODULE]
    assert not users, f"imports {LIVE_MODULE} at lines {users}; frames and sockets live in mininet_topos"


@pytest.mark.parametrize("path", [p for p in FILES if p.parent.name == "tests"],
                         ids=[i for i, p in zip(IDS, FILES, strict=True) if p.parent.name == "tests"])
def test_test_modules_do_not_import_each_other(path: Path):
    others = [f"line {line}: {name}" for line, name in _imported_modules(path)
              if name.split(".")[-1].startswith("test_") and name.startswith("tests")]
    assert not others, f"imports another test module (move shared helpers to tests/helpers.py): {others}"
