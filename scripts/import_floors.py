"""The rooms of mmdata/mmtrain, their floors and the arrows between them, read from the real imports.

A room is a top-level package or module under ``mmdata/`` (``mmdata/format/``, ``mmdata/io.py``, ...)
plus ``mmtrain`` as one room. Every ``import`` in every module is read with ``ast`` and marked:
``top`` (module level: runs when the module is imported), ``fn`` (inside a function: runs on first
use), ``str`` (a module named in a string: ``lazy_exports`` tables, ``import_module("...")``) or
``typing`` (under ``if TYPE_CHECKING:``, never runs). A room's floor is the longest chain of arrows
that run (top, fn, str) below it; floor 0 imports no other room. An arrow "runs back up" when it goes
against the data flow clean -> shard -> inspect|loader -> mmtrain (a foundation room importing a
stage, an earlier stage importing a later one, mmdata importing mmtrain); cycles are listed too.

    python scripts/import_floors.py [ROOT]            # the room graph, floors, back-arrows, cycles
    python scripts/import_floors.py [ROOT] --sizes 10 # the 10 largest functions (lines, def to end)

ROOT is a checkout (default: this one); for an old commit, ``git archive REV | tar -x -C /tmp/x``.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("mmdata", "mmtrain")
KINDS = ("top", "fn", "str", "typing")
HEAVY = ("torch", "torch_npu", "megatron", "ray", "transformers", "PIL", "pyvips", "cv2")
_MODULE_STRING = re.compile(r"^(mmdata|mmtrain)(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")


@dataclass(frozen=True)
class Edge:
    """One import: ``src`` module imports ``dst`` module (or a third-party top name), of ``kind``, at ``line``."""

    src: str
    dst: str
    kind: str
    line: int


def module_files(root: Path) -> dict[str, Path]:
    """Every module under the packages: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def room_of(module: str) -> str | None:
    """``mmdata.format.tar`` -> ``format``; ``mmdata.io`` -> ``io``; ``mmdata`` -> ``mmdata``; ``mmtrain.*`` -> ``mmtrain``."""
    parts = module.split(".")
    if parts[0] == "mmtrain":
        return "mmtrain"
    if parts[0] == "mmdata":
        return parts[1] if len(parts) > 1 else "mmdata"
    return None


def _resolve(modules: dict[str, Path], src: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    """The modules an ``from X import a, b`` names: ``X.a`` where that is a module, else ``X``."""
    if node.level:
        base = src.split(".") if is_pkg else src.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{pkg}.{alias.name}"
        out.append(sub if sub in modules else pkg)
    return out


class _Visitor(ast.NodeVisitor):
    def __init__(self, modules: dict[str, Path], src: str, is_pkg: bool) -> None:
        self.modules, self.src, self.is_pkg = modules, src, is_pkg
        self.depth = 0  # function nesting
        self.typing = 0  # inside `if TYPE_CHECKING:`
        self.edges: list[Edge] = []

    def _kind(self) -> str:
        return "typing" if self.typing else ("fn" if self.depth else "top")

    def _add(self, dst: str, kind: str, line: int) -> None:
        self.edges.append(Edge(self.src, dst, kind, line))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self.typing += 1
            for n in node.body:
                self.visit(n)
            self.typing -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, self._kind(), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for dst in _resolve(self.modules, self.src, self.is_pkg, node):
            self._add(dst, self._kind(), node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            mod = node.value.partition(":")[0]
            if mod in self.modules:
                self._add(mod, "str", node.lineno)


def scan(root: Path) -> list[Edge]:
    """Every import of every module under ``root``'s packages (third-party ones too)."""
    modules = module_files(root)
    edges: list[Edge] = []
    for name, path in modules.items():
        v = _Visitor(modules, name, path.name == "__init__.py")
        v.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges.extend(v.edges)
    return edges


def room_edges(edges: list[Edge]) -> dict[tuple[str, str], dict[str, list[Edge]]]:
    """(src room, dst room) -> kind -> the imports behind that arrow (self-arrows dropped)."""
    out: dict[tuple[str, str], dict[str, list[Edge]]] = defaultdict(lambda: defaultdict(list))
    for e in edges:
        a, b = room_of(e.src), room_of(e.dst)
        if a and b and a != b:
            out[(a, b)][e.kind].append(e)
    return out


def rooms(root: Path) -> list[str]:
    return sorted({room_of(m) for m in module_files(root)} - {None})


def _sccs(nodes: list[str], arrows: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each sorted; only those of more than one room."""
    succ = defaultdict(list)
    for a, b in arrows:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def floors(nodes: list[str], arrows: set[tuple[str, str]]) -> dict[str, int]:
    """Longest chain of arrows below each room (rooms in a cycle share the floor of the cycle)."""
    comp = {n: n for n in nodes}
    for c in _sccs(nodes, arrows):
        for n in c:
            comp[n] = c[0]
    succ = defaultdict(set)
    for a, b in arrows:
        if comp[a] != comp[b]:
            succ[comp[a]].add(comp[b])
    memo: dict[str, int] = {}

    def level(c: str) -> int:
        if c not in memo:
            memo[c] = 1 + max((level(d) for d in succ[c]), default=-1)
        return memo[c]

    return {n: level(comp[n]) for n in nodes}


# The plan (docs/DESIGN.md, ARCHITECTURE.md): data flows clean -> shard -> inspect/loader -> mmtrain.
# A room not named here is a foundation (flow 0); cli is the entry and may import any stage.
FLOW = {"clean": 1, "shard": 2, "inspect": 3, "loader": 3, "mmtrain": 4}
ENTRY = ("cli",)


def against_plan(a: str, b: str) -> str | None:
    """``"up"`` when room ``a`` importing ``b`` runs against the flow (a foundation importing a stage, an
    earlier stage a later one, mmdata importing mmtrain), ``"side"`` for two stages on one step, else None."""
    if a in ENTRY:
        return None
    fa, fb = FLOW.get(a, 0), FLOW.get(b, 0)
    if fb > fa:
        return "up"
    if fa == fb and fa > 0:
        return "side"
    return None


@dataclass
class Look:
    """What ``report`` prints: the arrows by kind, floors, arrows against the plan, cycles, heavy imports."""

    nodes: list[str]
    edges: list[Edge]
    arrows: dict[tuple[str, str], dict[str, list[Edge]]]
    floor: dict[str, int]  # over every arrow that runs (top, fn, str)
    floor_top: dict[str, int]  # over module-level arrows only (what `import X` loads)
    cycles: list[list[str]]  # rooms, every arrow that runs
    module_cycles: list[list[str]]  # modules, module-level imports
    heavy: dict[str, dict[str, list[str]]]  # room -> kind -> heavy third-party names

    def against(self) -> list[tuple[str, str, str, list[Edge]]]:
        """(src, dst, "up"/"side", the imports behind it) for every arrow the plan forbids or calls sideways."""
        out = []
        for (a, b), kinds in sorted(self.arrows.items()):
            why = against_plan(a, b)
            runs = [e for k in ("top", "fn", "str") for e in kinds.get(k, [])]
            if why and runs:
                out.append((a, b, why, runs))
        return out

    def stage_arrows(self) -> list[tuple[str, str, list[Edge]]]:
        """Every arrow between two stages (mmtrain included), whatever its direction."""
        return [(a, b, [e for k in ("top", "fn", "str") for e in kinds.get(k, [])])
                for (a, b), kinds in sorted(self.arrows.items())
                if a in FLOW and b in FLOW and any(kinds.get(k) for k in ("top", "fn", "str"))]


def look(root: Path) -> Look:
    """Scan ``root`` and work out the room graph, its floors, cycles and the arrows against the plan."""
    edges = sorted(set(scan(root)), key=lambda e: (e.src, e.line, e.dst, e.kind))
    nodes = rooms(root)
    arrows = room_edges(edges)
    top = {k for k, v in arrows.items() if v.get("top")}
    run = {k for k, v in arrows.items() if v.get("top") or v.get("fn") or v.get("str")}
    mods = sorted({e.src for e in edges})
    mod_top = {(e.src, e.dst) for e in edges if e.kind == "top" and e.dst in mods and e.src != e.dst}
    heavy: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for e in edges:
        name = e.dst.split(".")[0]
        if name in HEAVY and name not in heavy[room_of(e.src)][e.kind]:
            heavy[room_of(e.src)][e.kind].append(name)
    return Look(nodes, edges, arrows, floors(nodes, run), floors(nodes, top), _sccs(nodes, run),
                _sccs(mods, mod_top), heavy)


def _where(e: Edge) -> str:
    return f"{e.src}:{e.line}"


def _targets(es: list[Edge]) -> str:
    by: dict[str, list[str]] = defaultdict(list)
    for e in es:
        w = f"{_where(e)}{'' if e.kind == 'top' else ' ' + e.kind}"
        if w not in by[e.dst]:
            by[e.dst].append(w)
    return "; ".join(f"{d} ({', '.join(w)})" for d, w in sorted(by.items()))


def report(lk: Look) -> str:
    """The room graph, floors, arrows against the plan, cycles and heavy imports as plain text."""
    lines = ["# arrows (room -> room(kind:imports); top = module level, fn = inside a function,"
             " str = a module named in a string, typing = under TYPE_CHECKING)"]
    for a in sorted(lk.nodes, key=lambda n: (-lk.floor[n], n)):
        outs = sorted((b, kinds) for (s, b), kinds in lk.arrows.items() if s == a)
        desc = ", ".join(f"{b}({' '.join(f'{k}:{len(kinds[k])}' for k in KINDS if kinds.get(k))})"
                         for b, kinds in outs)
        lines.append(f"  {a:8s} -> {desc or '-'}")
    lines.append("# floors over every arrow that runs (top, fn, str); 0 = imports no other room;"
                 " [n] = floor counting module-level arrows only")
    for f in sorted(set(lk.floor.values()), reverse=True):
        lines.append(f"  {f}: " + " ".join(
            n + ("" if lk.floor_top[n] == f else f"[{lk.floor_top[n]}]")
            for n in sorted(n for n in lk.nodes if lk.floor[n] == f)))
    lines.append("# arrows against the flow clean -> shard -> inspect|loader -> mmtrain"
                 " (up: to a later stage or from a foundation to a stage; side: between inspect and loader)")
    lines += [f"  {why:4s} {a} -> {b}: {_targets(es)}" for a, b, why, es in lk.against()] or ["  none"]
    lines.append("# stage-to-stage arrows (any direction)")
    lines += [f"  {a} -> {b}: {_targets(es)}" for a, b, es in lk.stage_arrows()] or ["  none"]
    lines.append(f"# room cycles: {lk.cycles or 'none'}")
    for c in lk.cycles:
        for (a, b), kinds in sorted(lk.arrows.items()):
            if a in c and b in c:
                lines.append(f"  {a} -> {b}: {_targets([e for k in ('top', 'fn', 'str') for e in kinds.get(k, [])])}")
    lines.append(f"# module cycles (module-level imports): {lk.module_cycles or 'none'}")
    lines.append("# heavy third-party imports by room")
    for r in sorted(lk.heavy):
        lines.append(f"  {r:8s} " + "; ".join(f"{k}: {' '.join(sorted(v))}" for k, v in lk.heavy[r].items()))
    return "\n".join(lines)


def function_sizes(root: Path) -> list[tuple[int, str]]:
    """(lines from ``def`` to its last line, ``module:Qual.name``) for every function, largest first."""
    out = []
    for name, path in module_files(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    q = f"{prefix}{child.name}"
                    out.append((child.end_lineno - child.lineno + 1, f"{name}:{q}"))
                    walk(child, q + ".")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return sorted(out, key=lambda t: (-t[0], t[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--sizes", type=int, metavar="N", help="list the N largest functions instead")
    p.add_argument("--named", nargs="*", default=[], help="with --sizes: also every function of these names")
    a = p.parse_args(argv)
    root = Path(a.root)
    if a.sizes:
        sizes = function_sizes(root)
        for n, q in sizes[: a.sizes]:
            print(f"{n:5d}  {q}")
        for want in a.named:
            hits = [(n, q) for n, q in sizes if q.rsplit(".", 1)[-1].rsplit(":", 1)[-1] == want]
            print(f"  {want}: " + (", ".join(f"{q} {n}" for n, q in hits) or "gone"))
        return 0
    print(report(look(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
