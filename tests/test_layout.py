"""The layered house: imports run only downwards between packages, no module imports in a circle (function-
level imports included), and the training path has no function over 60 lines.  Read from the source with
``ast``, so a violation names the file and line."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# lower floors never import higher ones; packages on one floor never import each other
FLOORS = {"utils": 0, "backbones": 1, "quant": 2, "assets": 2, "data": 3, "deploy": 3, "eval": 4, "distill": 5,
          "tools": 6, "train_quantization": 6, "eval_benchmarks": 6, "export_model": 6, "lab": 7}
TRAINING_PATH = ["distill", "train_quantization.py"]
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for top in FLOORS:
        path = REPO / top
        files = sorted(path.rglob("*.py")) if path.is_dir() else [REPO / f"{top}.py"]
        for file in files:
            parts = file.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _imports(file: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        out += [(name, node.lineno) for name in names if name.split(".")[0] in FLOORS]
    return out


def test_packages_import_only_lower_floors():
    modules = _modules()
    wrong = []
    for name, file in modules.items():
        own = name.split(".")[0]
        for target, line in _imports(file, modules):
            other = target.split(".")[0]
            if other != own and FLOORS[other] >= FLOORS[own]:
                wrong.append(f"{file.relative_to(REPO)}:{line} ({own}, floor {FLOORS[own]}) imports {target} "
                             f"(floor {FLOORS[other]})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_in_a_circle():
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        for target, _ in _imports(file, modules):
            if target in modules and target != name:
                graph[name].add(target)
            package = target.split(".")[0]
            if package != name.split(".")[0] and package in modules:
                graph[name].add(package)  # importing a.b from outside runs a/__init__.py first

    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_training_path_functions_are_short():
    files = [f for entry in TRAINING_PATH
             for f in (sorted((REPO / entry).rglob("*.py")) if (REPO / entry).is_dir() else [REPO / entry])]
    long = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{file.relative_to(REPO)}:{node.lineno} {node.name}() has {lines} lines")
    assert len(files) > 5 and not long, "\n".join(long)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The floor test is not vacuous: a utils module importing quant is caught."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "bad.py").write_text("import os\n\ndef f():\n    from quant.model import quantize_model\n")
    modules = {"utils.bad": tmp_path / "utils" / "bad.py", "quant.model": REPO / "quant" / "model.py"}
    assert _imports(modules["utils.bad"], modules) == [("quant.model", 4)]


LIBRARY = ["utils", "backbones", "quant", "assets", "data", "deploy", "eval", "distill", "tools",
           "train_quantization.py", "eval_benchmarks.py", "export_model.py"]


def test_the_library_holds_no_path_to_the_lab_photos_and_no_test_hook():
    """The evaluation photos beside the checkout (``../shared``) are the lab's; the library reads no
    environment variable that exists for the tests."""
    found = []
    for entry in LIBRARY:
        files = sorted((REPO / entry).rglob("*.py")) if (REPO / entry).is_dir() else [REPO / entry]
        for file in files:
            text = file.read_text()
            for needle in ('"shared"', "'shared'", "../shared", "RANK_STATE", "QUANTFACE_TEST"):
                if needle in text:
                    found.append(f"{file.relative_to(REPO)}: {needle}")
    assert not found, "\n".join(found)
