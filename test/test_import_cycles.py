"""No import cycles between the modules of ``trianflow_ros``, function-level imports included."""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'trianflow_ros'


def module_files(root: Path = REPO / PACKAGE) -> Dict[str, Path]:
    """Return {dotted module name: file} of every module and package of the package."""
    out = {}
    for path in sorted(root.rglob('*.py')):
        parts = list(path.relative_to(root.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out['.'.join(parts)] = path
    return out


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """Return the longest known module that ``name`` is or lies in (``a.b.f`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition('.')[0]
    return None


def imports_of(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """
    Return the package modules that ``module`` imports anywhere in its file.

    Every ``import`` / ``from ... import`` node counts, at module level or inside a function,
    class or ``if`` (``TYPE_CHECKING`` blocks included: a cycle there is still a knot).
    Relative imports are resolved against the module's package; ``from a import b`` counts
    ``a.b`` when that is a module, else ``a``.
    """
    is_package = path.name == '__init__.py'
    package = module if is_package else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                stem = '.'.join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ''
            names = [f'{stem}.{a.name}' for a in node.names]
        else:
            continue
        for name in names:
            if name.split('.')[0] != PACKAGE:
                continue
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    """Return {module: the package modules it imports}."""
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """
    Return one cycle of every strongly connected component with more than one module.

    Tarjan's algorithm (iterative), then a shortest cycle through the component's first
    module, found by breadth-first search inside the component.
    """
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
    cycles = []
    for comp in comps:
        members, start = set(comp), comp[0]
        parent, frontier, end = {start: None}, [start], None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        end = v
                        break
                    if w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and 'trianflow_ros.geometry.se3' in graph
    cycles = find_cycles(graph)
    assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_cycle_finder_finds_cycles():
    """The check above could pass vacuously: prove the graph and the finder see a knot."""
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(), 'e': {'e2'}, 'e2': {'e'}}
    assert sorted(find_cycles(graph)) == [['a', 'b', 'c', 'a'], ['e', 'e2', 'e']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'sub' / '__init__.py').write_text('from . import b\n')
    (pkg / 'sub' / 'a.py').write_text(
        'import os\n\n\ndef f():\n    from .b import g\n    return g\n')
    (pkg / 'sub' / 'b.py').write_text(
        'def g():\n    from ..sub import a\n    import trianflow_ros.top.x\n    return a\n')
    (pkg / 'top.py').write_text('from trianflow_ros.sub.a import f\n')
    modules = module_files(pkg)
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert graph['trianflow_ros.sub.a'] == {'trianflow_ros.sub.b'}
    assert graph['trianflow_ros.sub.b'] == {'trianflow_ros.sub.a', 'trianflow_ros.top'}
    assert graph['trianflow_ros.sub'] == {'trianflow_ros.sub.b'}
    assert graph['trianflow_ros.top'] == {'trianflow_ros.sub.a'}
    assert find_cycles(graph) == [['trianflow_ros.sub.a', 'trianflow_ros.sub.b',
                                   'trianflow_ros.sub.a']]
