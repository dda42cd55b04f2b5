"""The shape of the house, checked: packages that follow the pipeline and import only downward, the run
folder's names spelt by its one owner (llm/run.py), and functions short enough to read in one go."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The pipeline, top to bottom: a package imports only the packages after it (and the top-level modules).
LAYERS = ("cli", "train", "eval", "model", "data")
TOP_MODULES = ("__init__.py", "__main__.py", "config.py", "device.py", "errors.py", "run.py")
MAX_FUNCTION_LINES = 60
# The run folder's and a checkpoint's file and folder names: llm/run.py alone writes them as strings.
RUN_FOLDER_NAMES = {"metrics.jsonl", "trainer_state.pt", "info.json", "latest", "best", "latest.old"}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a file imports (`from llm.data import tasks` gives llm.data and
    llm.data.tasks)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "llm" and parts[1] in LAYERS else None


def test_the_top_of_llm_holds_a_handful_of_modules_beside_the_packages():
    assert sorted(p.name for p in (REPO / "llm").glob("*.py")) == sorted(TOP_MODULES)
    packages = sorted(p.name for p in (REPO / "llm").iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_packages_below_it(package):
    above = set(LAYERS[: LAYERS.index(package)])
    wrong = {
        f"{path.relative_to(REPO)} imports {module}"
        for path in python_files(f"llm/{package}")
        for module in imported_modules(path)
        if layer_of(module) in above
    }
    assert not wrong, sorted(wrong)


def test_the_top_level_modules_import_no_package():
    wrong = {
        f"{name} imports {module}"
        for name in TOP_MODULES
        for module in imported_modules(REPO / "llm" / name)
        if layer_of(module) and name != "__main__.py"
    }
    assert not wrong, sorted(wrong)


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in python_files("llm", "studio")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def string_constants(tree: ast.AST) -> list[ast.Constant]:
    """The string literals of a module, docstrings left out (they may name the files they describe)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_only_the_run_folders_owner_spells_its_file_names():
    spelt = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}"
        for path in python_files("llm", "studio") + [REPO / "app.py"]
        if path != REPO / "llm" / "run.py"
        for node in string_constants(ast.parse(path.read_text()))
        if node.value.strip("/") in RUN_FOLDER_NAMES
    ]
    assert not spelt, spelt
