"""What a module computes, as a hash that only a change to what it runs can move, and which
modules a task's result depends on. The standard library alone, so any Python can run it
(tests/test_cache.py runs it under every Python 3.10+ on the machine and compares).

The hash is of the module's syntax tree with what cannot change a result taken out (imports,
docstrings, type annotations, layout and comments), written in a form of our own: `ast.dump`
differs between Python versions for the same source (3.12 adds `type_params=[]`, 3.13 leaves
empty fields out), which would change every cache key on a Python upgrade."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

TASKS = Path(__file__).resolve().parent  # the tasks package: the modules keys may depend on


class _WhatRuns(ast.NodeTransformer):
    """Drops from a module's syntax tree what does not change what it computes."""

    in_function = False

    def visit_Import(self, node: ast.AST) -> None:
        return None

    visit_ImportFrom = visit_Import  # noqa: N815

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        self.generic_visit(node)
        if not self.in_function:  # a declaration in a class body (a dataclass field) stays
            node.annotation = ast.Constant(value="")
            return node
        if node.value is None:  # `x: int` inside a function does nothing
            return None
        return ast.Assign(targets=[node.target], value=node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        outer, self.in_function = self.in_function, True
        try:
            return self._body(node)
        finally:
            self.in_function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._body(node)

    def visit_Module(self, node: ast.Module) -> ast.AST:
        return self._body(node)

    def _body(self, node: Any) -> Any:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        node.body = body
        self.generic_visit(node)
        node.body = node.body or [ast.Pass()]
        return node


def canonical(node: Any) -> Any:
    """A syntax tree as nested lists, the same on every Python 3.10+: each node's type and its
    fields by name, fields that are None or empty left out (the versions differ in which such
    fields a node has), positions never included."""
    if isinstance(node, ast.AST):
        fields = ((f, canonical(getattr(node, f, None))) for f in node._fields)
        return [type(node).__name__, [[f, v] for f, v in fields if v is not None and v != []]]
    if isinstance(node, list):
        return [canonical(n) for n in node]
    if isinstance(node, bytes | complex) or node is Ellipsis:
        return [type(node).__name__, repr(node)]
    return node  # str, int, float, bool


def source_digest(source: str) -> str:
    """sha256 of what the source runs (see the module docstring)."""
    tree = _WhatRuns().visit(ast.parse(source))
    return hashlib.sha256(json.dumps(canonical(tree), sort_keys=True).encode()).hexdigest()


def module_file(module: str) -> Path:
    """A module's source file without importing anything: 'tasks.cache' -> tasks/cache.py,
    'tasks.sae' -> tasks/sae/__init__.py; any other module where the import system finds it."""
    if module.startswith("tasks."):
        path = TASKS.joinpath(*module.split(".")[1:])
        return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ValueError(f"no source file for module {module!r}")
    return Path(spec.origin)


def imports_of(module: str) -> set[str]:
    """The tasks modules that `module` imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tasks.")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module == "tasks" or (node.module or "").startswith("tasks."))
        ):
            # from tasks import cache; from tasks.sae import course: the names may be modules
            found |= {f"{node.module}.{a.name}" for a in node.names}
            found |= {node.module} - {"tasks"}
    return {m for m in found if module_file(m).is_file()}


def reachable(module: str, leave_out: frozenset[str]) -> tuple[str, ...]:
    """`module` and every tasks module it imports, directly or through others, except those
    in `leave_out` (which are not followed either), sorted."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current in leave_out:
            continue
        seen.add(current)
        todo.extend(imports_of(current))
    return tuple(sorted(seen))
