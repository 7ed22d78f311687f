"""Imports point one way (DESIGN.md): units/errors/rng <- nn, hw <- plan <- sim <- report <- the edge.

The function plane (nn) never imports the pool (hw) or the simulator (sim);
the pool never imports layers. Checked on the source, so a lazy import counts.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "simdl"
BASE = {"simdl.units", "simdl.errors", "simdl.rng", "simdl"}
# What each layer may import from simdl, besides the base and itself.
ALLOWED = {
    "nn": set(),
    "hw": set(),
    "plan": {"nn", "hw"},
    "sim": {"nn", "hw", "plan"},
    "report": {"nn", "hw", "plan", "sim"},
}


def simdl_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("simdl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simdl"):
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_one_way(layer):
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in sorted(simdl_imports(path)):
            if module in BASE:
                continue
            target = module.split(".")[1]
            if target != layer and target not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not bad, "\n".join(bad)


def test_every_layer_is_checked():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(ALLOWED)


def test_no_module_imports_itself_through_others():
    """No import cycle between simdl's modules, lazy (function-level) imports included:
    a cycle hidden by a deferred import is still two modules that cannot be read apart."""
    import networkx as nx

    graph = nx.DiGraph()
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph.add_node(name)
        for module in simdl_imports(path):
            if module != "simdl" and module != name:
                graph.add_edge(name, module)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles
