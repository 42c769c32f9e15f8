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


def unit(path: Path) -> str:
    """The layered unit a file belongs to: its module, or its package (tasks/sae/fit.py: sae)."""
    rel = path.relative_to(ROOT / "tasks")
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def sources() -> list[Path]:
    return sorted(p for p in (ROOT / "tasks").rglob("*.py") if p != ROOT / "tasks/__init__.py")


def test_every_module_has_a_layer() -> None:
    assert {unit(p) for p in sources()} == set(LAYER), (
        "place new modules in tasks.LAYERS (tasks/__init__.py)"
    )


def test_imports_run_down_the_layers_only() -> None:
    """A package (tasks/sae/) is one unit: its modules import each other, and go down only."""
    wrong = []
    for path in sources():
        here = unit(path)
        for name in sorted(imported(path)):
            other = name.split(".")[1] if name.startswith("tasks.") else ""
            if name.split(".")[0] == "flows":
                wrong.append(f"{here} imports {name} (flows/ is above every task module)")
            elif other and other != here and LAYER[other] >= LAYER[here]:
                wrong.append(f"{here} (layer {LAYER[here]}) imports {other} (layer {LAYER[other]})")
            elif other == here and path.parent == ROOT / "tasks":
                wrong.append(f"{here} imports itself")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from tasks import runs\n    import tasks.sae\n")
    assert {"tasks.runs", "tasks.sae"} <= imported(src)
