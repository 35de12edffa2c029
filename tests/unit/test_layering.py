"""Layering: the core library never imports the toy world, and the toy world's modules form no import cycle.

The toy world (`acdc_lib/toyworld/`) is one backend among others: it may import the core, but no core
module may import it, at module level or inside a function. The core reaches a backend only by name,
through `acdc_lib.components`.
"""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "acdc_lib"
TOY = LIB / "toyworld"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, package: str | None = None) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in the file, nested ones included.

    Relative imports resolve against `package` (default: the file's own package inside acdc_lib).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [alias.name for alias in node.names]))
    return out


def _touches_toyworld(module: str, names: list[str]) -> bool:
    toy = "acdc_lib.toyworld"
    if module == toy or module.startswith(toy + "."):
        return True
    return module == "acdc_lib" and "toyworld" in names  # from acdc_lib import toyworld / from . import toyworld


def core_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if TOY not in p.parents)


def test_the_walk_sees_the_core_and_resolves_relative_imports(tmp_path):
    names = {p.relative_to(LIB).as_posix() for p in core_files()}
    assert {"memory.py", "stories.py", "stories_llm.py", "loop.py"} <= names
    assert not any(n.startswith("toyworld/") for n in names)
    # relative imports resolve against the file's package
    imports = {m for _, m, _ in _imports(LIB / "stories_llm.py")}
    assert {"acdc_lib.llm", "acdc_lib.memory"} <= imports
    # every spelling of a toy-world import is caught, nested in a function too
    probe = tmp_path / "probe.py"
    probe.write_text("import acdc_lib.toyworld.world\n"
                     "from acdc_lib.toyworld import world\n"
                     "from acdc_lib import io, toyworld\n"
                     "def f():\n"
                     "    from .toyworld.world import SceneState\n"
                     "    from . import toyworld\n"
                     "    from .stories import read_stories\n", encoding="utf-8")
    found = [(line, _touches_toyworld(m, n)) for line, m, n in _imports(probe, package="acdc_lib")]
    assert sorted(found) == [(1, True), (2, True), (3, True), (5, True), (6, True), (7, False)]
    deeper = [m for _, m, _ in _imports(probe, package="acdc_lib.experiment")]
    assert "acdc_lib.experiment.toyworld.world" in deeper  # one dot stays in the package


def test_core_modules_never_import_the_toy_world():
    offences = []
    for path in core_files():
        for line, module, names in _imports(path):
            if _touches_toyworld(module, names):
                what = module + (f" ({', '.join(names)})" if names else "")
                offences.append(f"{path.relative_to(LIB.parent)}:{line}: imports {what}")
    assert not offences, "core modules import the toy world:\n" + "\n".join(offences)


def test_toy_world_modules_form_no_import_cycle():
    modules = {_module_name(p): p for p in TOY.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for _, module, names in _imports(path):
            deps |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            if module in modules:
                deps.add(module)
        graph[name] = deps - {name}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
