"""The reconad modules each ``dvc.yaml`` stage runs, found from the code itself.

Not a test module: ``test_dvc_deps.py`` checks ``dvc.yaml`` against it. A stage's command
is ``reconad <stage> [--variant V --category C]``. It runs ``reconad.cli`` (its module
level, its helpers and the one handler ``run_<stage>``), then every reconad module
those import, at module level or inside a function (an over-approximation: a
function-level import counts even if that function is not called); imports under
``if TYPE_CHECKING:`` do not run. Method families are imported by name from the
registry, so a stage of a family also runs that family's module; an ensemble's members
can be of any family, so its stages run every family module.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from reconad.models import FAMILIES

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "reconad"

CLI = "reconad.cli"
HANDLER_PREFIX = "run_"


def module_file(module: str) -> Path:
    """``src/reconad/a/b.py`` or ``src/reconad/a/__init__.py`` for ``reconad.a.b``."""
    path = SRC.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@functools.cache
def direct_imports(module: str) -> frozenset[str]:
    """The reconad modules ``module`` imports anywhere in its source, with the packages
    that hold them (Python runs a package's ``__init__`` before any of its modules)."""
    return _reconad_modules(_imported_names(_parse(module)))


def cli_imports(stage: str) -> frozenset[str]:
    """What ``reconad <stage>`` imports from ``reconad.cli``: everything but the other
    stages' handlers."""
    tree = _parse(CLI)
    other_handlers = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith(HANDLER_PREFIX)
        and node.name != f"{HANDLER_PREFIX}{stage}"
    }
    tree.body = [
        node
        for node in tree.body
        if not (isinstance(node, ast.FunctionDef) and node.name in other_handlers)
    ]
    return _reconad_modules(_imported_names(tree))


def closure(roots: set[str]) -> set[str]:
    """``roots`` and every reconad module they import, transitively."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending.extend(direct_imports(module) - seen)
    return seen


def family_modules(family: str) -> set[str]:
    """The module(s) the registry imports for ``family``; every family for an ensemble."""
    families = FAMILIES if family == "ensemble" else [family]
    return {FAMILIES[name].target.split(":")[0] for name in families}


def stage_modules(stage: str, family: str | None) -> set[str]:
    """Every reconad module ``reconad <stage>`` runs for a variant of ``family``."""
    roots = set(cli_imports(stage))
    if family is not None:
        roots |= family_modules(family)
    return {CLI, *closure(roots)}


def stage_files(stage: str, family: str | None) -> set[str]:
    """The same as repository paths (``src/reconad/train.py``)."""
    root = SRC.parent
    return {module_file(m).relative_to(root).as_posix() for m in stage_modules(stage, family)}


def _parse(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(encoding="utf-8"))


def _imported_names(tree: ast.AST) -> set[str]:
    """Modules and ``module.name`` of every import in ``tree``, except type-checking ones."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _reconad_modules(names: set[str]) -> frozenset[str]:
    modules = {name for name in names if name.split(".")[0] == PACKAGE and _exists(name)}
    return frozenset(modules | {parent for name in modules for parent in _parents(name)})


def _exists(module: str) -> bool:
    return module_file(module).exists()


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]
