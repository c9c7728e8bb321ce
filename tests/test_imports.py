"""No circle of imports inside the package: the graph of which module imports which (imports inside functions
included, since they run too) has no cycle. A submodule's implicit import of its own package is not an edge."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nni_bert_tickets"


def _modules():
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def import_graph():
    """``{module: {modules it imports}}`` over the package's own modules, from every import statement."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (base + "." + node.module if node.module else base) if node.level else node.module
                # `from x import y`: y is a submodule of x, or a name defined in x
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph):
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_imports_inside_functions_and_finds_a_circle():
    graph = import_graph()
    assert "nni_bert_tickets.core.masks" in graph["nni_bert_tickets.core.pruners"]  # `from . import masks as M`
    assert "nni_bert_tickets.core.baselines" in graph["nni_bert_tickets.core.pruners"]  # inside a method
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_inside_the_package():
    assert cycles(import_graph()) == []


def test_the_folders_are_layered():
    """core/ at the bottom, then tasks/, training/, experiments/: no module imports a folder above its own."""
    order = {"_version": 0, "core": 1, "tasks": 2, "training": 3, "experiments": 4}
    graph = import_graph()
    folder = lambda name: name.split(".")[1] if "." in name else None  # noqa: E731 (None: the package root)
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if folder(a) in order and folder(b) in order and order[folder(b)] > order[folder(a)]]
    assert upward == []
