"""The package's layers, checked at the source: each module imports only its own layer or
the layers below it, and no import circle exists anywhere in ``edged/``.

A layer is named by the longest module prefix in ``LAYERS``; a module the table does not
name fails the test, so a new folder has to say where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edged

PACKAGE = Path(edged.__file__).parent

#: Lowest first. Modules of one rank may import each other (cycles aside); a module may
#: import any lower rank, never a higher one.
LAYERS: dict[str, int] = {
    "edged": 0,  # __init__ (version only)
    "edged.errors": 0,
    "edged.logs": 0,
    "edged.sources": 1,
    "edged.models.catalog": 1,  # declarative: what a model is, its crop, its phase
    "edged.schemas": 1,  # the shipped JSON Schemas of the payloads (package data)
    "edged.config": 2,
    "edged.contracts": 2,
    "edged.privacy": 2,  # what may leave the device: the policy every gate applies
    "edged.models": 3,
    "edged.pipeline": 4,
    "edged.runtime": 5,
    "edged.analysis": 5,
    "edged.mqtt": 5,
    "edged.service": 6,
    "edged.cli": 7,
    "edged.__main__": 7,
}

#: Siblings of one rank that must not know each other (the transport and the per-camera
#: runtime meet only in the service layer).
SEPARATE: list[tuple[str, str]] = [
    ("edged.mqtt", "edged.runtime"),
    ("edged.mqtt", "edged.analysis"),
    ("edged.runtime", "edged.analysis"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def prefix_of(module: str, table: dict[str, int] | list[str]) -> str | None:
    best = None
    for name in table:
        if (module == name or module.startswith(name + ".")) and (
            best is None or len(name) > len(best)
        ):
            best = name
    return best


def imports_of(path: Path, module: str) -> set[str]:
    """Every edged module ``path`` imports, lazy imports inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edged")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "edged":
                continue
            for alias in node.names:  # `from edged.models import loader` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    found.discard(module)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_named_layer() -> None:
    unplaced = sorted(m for m in graph() if prefix_of(m, LAYERS) is None)
    assert unplaced == [], f"add these to LAYERS: {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, targets in graph().items():
        own = LAYERS[prefix_of(module, LAYERS) or "edged"]
        for target in sorted(targets):
            layer = prefix_of(target, LAYERS)
            if layer is not None and LAYERS[layer] > own:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_transport_and_runtime_do_not_import_each_other() -> None:
    crossing = []
    for module, targets in graph().items():
        for a, b in SEPARATE:
            for x, y in ((a, b), (b, a)):
                if prefix_of(module, [x]) and any(prefix_of(t, [y]) for t in targets):
                    crossing.append(f"{module} -> {y}")
    assert crossing == []


def test_no_import_circle_between_modules() -> None:
    g = graph()
    # Package __init__ files that only re-export their members are part of their members'
    # circle by construction; count only imports of modules, not of the package itself.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_layer_check_fails_on_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: an upward import in a parsed file is found."""
    fake = PACKAGE / "models" / "catalog.py"
    found = imports_of(fake, "edged.models.catalog")
    assert all(LAYERS[prefix_of(t, LAYERS) or "edged"] <= 1 for t in found)
    probe = tmp_path / "probe.py"
    probe.write_text("from edged.service.daemon import Daemon\n", encoding="utf-8")
    assert imports_of(probe, "edged.models.probe") == {"edged.service.daemon"}
