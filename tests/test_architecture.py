"""The layering in ARCHITECTURE.md, checked from the source: who may import what, and what no code may do.

Imports are read with ``ast`` (imports inside function bodies count too), so a rule holds whether or not a module
is ever imported by a test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "chatft"
COMPONENTS = ROOT / "components"
PIPELINES = ROOT / "pipelines"
# Where code that ships or runs for users lives; tests may set up sys.path for themselves, nothing else may.
PRODUCT_CODE = (LIBRARY, COMPONENTS, PIPELINES, ROOT / "bench", ROOT / "flows", ROOT / "data")


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names (``from x import y`` gives both x and x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def top_level(name: str) -> str:
    return name.split(".", 1)[0]


def module_name(path: Path, package_root: Path) -> str:
    parts = path.relative_to(package_root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def component_modules() -> dict[str, set[str]]:
    """Each component folder and the module names of the scripts in it."""
    return {
        folder.name: {p.stem for p in folder.glob("*.py")} for folder in sorted(COMPONENTS.iterdir()) if folder.is_dir()
    }


def test_the_library_imports_neither_pipelines_nor_components():
    offending = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(LIBRARY)
        for name in imported_modules(path)
        if top_level(name) in {"pipelines", "components", "tests", "bench"}
    }
    assert not offending


def test_a_component_imports_only_chatft_and_its_own_folder():
    folders = component_modules()
    offending = []
    for folder, own in folders.items():
        others = set().union(*(names for name, names in folders.items() if name != folder)) - own
        for path in python_files(COMPONENTS / folder):
            for name in imported_modules(path):
                if top_level(name) in {"pipelines", "components", "tests", "bench"} or top_level(name) in others:
                    offending.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offending


def test_pipelines_are_imported_by_no_component_and_no_library_module():
    # The reverse direction is the two tests above; this one pins that pipelines itself is not imported back by
    # code that ships into a component snapshot (which has no pipelines/ folder on Azure ML).
    shipped = python_files(LIBRARY, COMPONENTS)
    assert not [p for p in shipped if any(top_level(n) == "pipelines" for n in imported_modules(p))]


def test_no_component_ships_or_loads_another_components_files():
    offending = []
    for spec_path in sorted(COMPONENTS.glob("*/component.yml")):
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        for include in spec.get("additional_includes") or []:
            target = (spec_path.parent / include).resolve()
            if target.is_relative_to(COMPONENTS):
                offending.append(f"{spec_path.relative_to(ROOT)}: additional_includes {include}")
    folders = sorted(component_modules())
    for path in python_files(COMPONENTS):
        text = path.read_text(encoding="utf-8")
        others = "|".join(re.escape(name) for name in folders if name != path.parent.name)
        if "spec_from_file_location" in text or re.search(rf"\.\./({others})\b", text):
            offending.append(f"{path.relative_to(ROOT)}: loads a file by path")
    assert not offending


def sys_path_edits(path: Path) -> list[int]:
    """Line numbers where ``path`` changes ``sys.path`` (insert/append/extend/assignment)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"insert", "append", "extend", "remove"}:
                target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
            lines.append(node.lineno)
    return sorted(lines)


# The file Azure ML's inference server loads by path: the server puts only its app root on sys.path (on Azure ML
# the code folder's parent), so the script adds its own folder to import the chatft shipped beside it.
SYS_PATH_EXCEPTIONS = {ROOT / "components" / "deploy_endpoint" / "score.py"}


def test_no_code_outside_tests_edits_sys_path():
    offending = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in python_files(*PRODUCT_CODE)
        if p not in SYS_PATH_EXCEPTIONS
        for line in sys_path_edits(p)
    ]
    assert not offending
    # An exception that no longer edits sys.path comes off the list.
    assert all(sys_path_edits(p) for p in SYS_PATH_EXCEPTIONS)


def test_the_sys_path_check_sees_an_edit(tmp_path):
    # The rule above must be able to fail: each spelling of an edit is found.
    sample = tmp_path / "edits.py"
    sample.write_text("import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path[:0] = ['z']\n")
    assert sys_path_edits(sample) == [2, 3, 4]


def import_graph(package_root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    paths = {module_name(p, package_root): p for pkg in packages for p in python_files(package_root / pkg)}
    return {name: {m for m in imported_modules(path) if m in paths and m != name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle, as ``a -> b -> a`` (depth-first; each cycle is reported from each module on it)."""
    found = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph.get(name, ())):
            if target in trail:
                found.append(" -> ".join([*trail[trail.index(target) :], target]))
            else:
                visit(target, [*trail, target])

    for start in graph:
        visit(start, [start])
    return found


@pytest.mark.parametrize(
    ("package_root", "packages"), [(ROOT / "src", ("chatft",)), (ROOT, ("pipelines",))], ids=["chatft", "pipelines"]
)
def test_no_import_cycles(package_root, packages):
    assert cycles(import_graph(package_root, packages)) == []


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})[:1] == ["a -> b -> c -> a"]


# Sizes a newcomer can read: a module of about 400 lines at most, a function of 60. The pipeline's wiring is one
# function on purpose: every node and edge of the DAG in one place.
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60
LONG_ON_PURPOSE = {("pipelines/finetune_pipeline.py", "build_pipeline")}
ALL_CODE = (*PRODUCT_CODE, ROOT / "tests", ROOT / "infra")


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_no_module_is_too_long_to_read():
    lengths = {
        p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in python_files(*ALL_CODE)
    }
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_too_long_to_read():
    found = {
        (p.relative_to(ROOT).as_posix(), name): lines
        for p in python_files(*ALL_CODE)
        for name, lines in long_functions(p, MAX_FUNCTION_LINES)
    }
    assert {key: n for key, n in found.items() if key not in LONG_ON_PURPOSE} == {}
    # The exception is still there and still long; when it is not, it comes off the list.
    assert set(LONG_ON_PURPOSE) <= set(found)


def test_the_function_length_check_sees_a_long_function(tmp_path):
    sample = tmp_path / "long.py"
    sample.write_text("def long():\n" + "    x = 1\n" * 61 + "\n\ndef short():\n    return 1\n")
    assert long_functions(sample, MAX_FUNCTION_LINES) == [("long", 62)]
