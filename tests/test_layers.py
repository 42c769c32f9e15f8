"""The layering of tasks/ (its __init__ draws it): every import of a tasks module, at the top or
inside a function, names a module of a lower layer; nothing under tasks/ imports flows/."""

from __future__ import annotations

import ast
from pathlib import Path

import tasks

ROOT = Path(__file__).resolve().parent.parent
LAYER = {name: i for i, layer in enumerate(tasks.LAYERS) for name in layer}


def imported(path: Path) -> set[str]:
    """Top-level package names and tasks' module names imported anywhere in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "tasks":  # from tasks import cache, paths
                names |= {f"tasks.{a.name}" for a in node.names}
    return names


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert modules == set(LAYER), "place new modules in tasks.LAYERS (tasks/__init__.py)"


def test_imports_run_down_the_layers_only() -> None:
    wrong = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.stem == "__init__":
            continue
        for name in sorted(imported(path)):
            if name.split(".")[0] == "flows":
                wrong.append(f"{path.stem} imports {name} (flows/ is above every task module)")
            elif name.startswith("tasks.") and LAYER[name[6:]] >= LAYER[path.stem]:
                wrong.append(
                    f"{path.stem} (layer {LAYER[path.stem]}) imports {name[6:]} "
                    f"(layer {LAYER[name[6:]]})"
                )
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from tasks import runs\n    import tasks.sae\n")
    assert {"tasks.runs", "tasks.sae"} <= imported(src)
