"""The shape of the package, checked: imports point one way (tools -> daemon -> engine -> core), no
import circles, and no class grows past what one reader holds in their head."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bitmamba_lsp"
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every bitmamba_lsp module this file imports, at any level (TYPE_CHECKING blocks included:
    a type-only edge still ties the two modules together). `from pkg import name` counts as an
    import of pkg.name when that is a module, else of pkg."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    out.add(full)
                elif base in known:
                    out.add(base)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {"bitmamba_lsp._core"}  # the C++ extension: a leaf
    return {name: imports(path, known) for name, path in mods.items()}


def test_the_import_graph_is_read() -> None:
    g = graph()
    # a few edges that must be seen, so the checks below cannot pass on an empty graph
    assert "bitmamba_lsp.engine.decoding" in g["bitmamba_lsp.lsp.suggest"]
    assert "bitmamba_lsp.lsp.session" in g["bitmamba_lsp.lsp.server"]
    assert "bitmamba_lsp.engine.model" in g["bitmamba_lsp.engine.formats.bitmamba_bin"]
    assert len(g) > 40


def test_no_import_circles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(g):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_arrows_point_one_way() -> None:
    """The engine and the HTTP server never import the daemon; the engine never imports a front
    end; the daemon never imports the HTTP server."""
    g = graph()
    bad = []
    for name, deps in g.items():
        for dep in deps:
            if name.startswith(("bitmamba_lsp.engine", "bitmamba_lsp.http")) and dep.startswith("bitmamba_lsp.lsp"):
                bad.append((name, dep))
            if name.startswith("bitmamba_lsp.engine") and dep.startswith(("bitmamba_lsp.http", "bitmamba_lsp.train")):
                bad.append((name, dep))
            if name.startswith("bitmamba_lsp.lsp") and dep.startswith("bitmamba_lsp.http"):
                bad.append((name, dep))
    assert not bad, bad


def test_no_class_over_300_lines_outside_train() -> None:
    long = []
    for path in PKG.rglob("*.py"):
        if "train" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(PKG)}:{node.name} ({n} lines)")
    assert not long, long


def test_every_document_the_code_cites_exists() -> None:
    """docs/*.md named in the sources (Python, C++, shipped metadata) are in the repository."""
    root = PKG.parent
    cited: set[str] = set()
    for path in [*PKG.rglob("*.py"), *PKG.rglob("*.json"), *(root / "core").rglob("*.[ch]*"), *(root / "tests").glob("*.py")]:
        cited.update(re.findall(r"\bdocs/[\w.-]+?\.md\b", path.read_text("utf-8", errors="replace")))
    assert "docs/formats.md" in cited
    missing = sorted(c for c in cited if not (root / c).is_file())
    assert not missing, missing
