"""The rooms of docs/ARCHITECTURE.md hold: who may import whom, and only through a public face.

A room is a sub-package of hmp/ (monitor, shell, qmp, harness, lab); the top level (cli,
exits, markers, __main__) is the "top" room. A room reaches another only through that room's
``__init__`` and the names in its ``__all__``; engine/ never imports hmp.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top-level modules any room may import: QEMU's option syntax, the process's end, the log,
# the pipe markers. They import no room themselves.
SHARED = {"chardev", "qemuopts", "exits", "log", "markers"}
# room → the rooms it may import (besides SHARED); docs/ARCHITECTURE.md shows the same.
ALLOWED: dict[str, set[str]] = {
    "top": {"monitor", "qmp", "shell", "harness", "lab", "cli"},
    "monitor": set(),
    "qmp": {"monitor"},
    "shell": {"monitor", "harness"},
    "harness": set(),
    "lab": {"monitor", "shell", "harness"},
}
ROOMS = {name for name in ALLOWED if name != "top"}
# Rooms that drive endpoints as separate processes and need nothing of the engine.
NO_ENGINE = {"harness", "markers"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in ``path``; names is [] for ``import x``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _room(path: Path) -> str:
    parts = path.relative_to(ROOT / "hmp").parts
    return parts[0] if len(parts) > 1 else "top"


def _targets(module: str, names: list[str]) -> list[tuple[str, str | None, list[str]]]:
    """(room or top-level module, submodule or None, names) that an hmp import reaches."""
    parts = module.split(".")
    if module == "hmp":  # from hmp import lab, harness
        return [(name, None, []) for name in names]
    return [(parts[1], ".".join(parts[2:]) or None, names)]


def _hmp_files() -> list[Path]:
    return sorted((ROOT / "hmp").rglob("*.py"))


def test_engine_never_imports_hmp() -> None:
    for path in sorted((ROOT / "engine").glob("*.py")):
        for module, _names in _imports(path):
            assert module.split(".")[0] != "hmp", f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _hmp_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_rooms_import_only_what_the_doc_allows(path: Path) -> None:
    room = _room(path)
    for module, names in _imports(path):
        top = module.split(".")[0]
        if top == "engine":
            assert room not in NO_ENGINE and path.stem not in NO_ENGINE, f"{room} imports {module}"
        if top != "hmp":
            continue
        for target, submodule, imported in _targets(module, names):
            if target == room:
                continue
            if target in SHARED:
                assert path.stem not in SHARED or target not in ROOMS, f"{path} imports a room"
                continue
            assert target in ALLOWED[room], f"{path}: room {room} may not import {target}"
            if target in ROOMS:
                assert submodule is None, f"{path}: {module} is inside room {target}"
                public = set(importlib.import_module(f"hmp.{target}").__all__)
                assert set(imported) <= public, f"{path}: {set(imported) - public} not public"


def test_every_room_is_in_the_doc() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rooms = {p.name for p in (ROOT / "hmp").iterdir() if (p / "__init__.py").exists()}
    assert rooms == ROOMS
    for room, allowed in ALLOWED.items():
        assert f"| {room} | {', '.join(sorted(allowed)) or '(none)'} |" in doc
    assert f"any room may import: {', '.join(f'`{m}`' for m in sorted(SHARED))}" in doc
