"""The walls between rooms (docs/DESIGN.md "Rooms and floors"), read statically from every import in
mmdata/ and mmtrain/ by scripts/import_floors.py: module-level, in-function and by-name imports all count."""

from __future__ import annotations

from pathlib import Path


from scripts.import_floors import Edge, look, room_of

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("clean", "shard", "inspect", "loader")
FOUNDATIONS = ("format", "models", "text", "storage")
RUNS = ("top", "fn", "str")  # every kind of import that executes (not TYPE_CHECKING-only)


def wall_breaches(edges: list[Edge]) -> list[str]:
    """Each import that breaks a wall, as ``src:line -> dst (kind)``; [] when every wall holds."""
    out = []
    for e in edges:
        a, b = room_of(e.src), room_of(e.dst)
        top_torch = e.kind == "top" and e.dst.split(".")[0] == "torch"
        if a is None or (a == b and not top_torch):
            continue
        why = None
        if a != "mmtrain" and b == "mmtrain":
            why = "mmdata imports mmtrain"
        elif a == "clean" and b == "shard" and e.kind in RUNS:
            why = "clean imports shard"
        elif a in ("shard", "inspect") and b == "loader" and e.kind in RUNS:
            why = f"{a} imports the loader"
        elif a in FOUNDATIONS and b in STAGES and e.kind in RUNS:
            why = f"{a} (below the stages) imports the stage {b}"
        elif top_torch and a not in ("loader", "mmtrain"):
            why = f"{a} imports torch at module level"
        if why:
            out.append(f"{why}: {e.src}:{e.line} -> {e.dst} ({e.kind})")
    return out


def test_the_walls_hold_in_this_checkout():
    assert wall_breaches(look(ROOT).edges) == []


def test_no_module_imports_itself_back_at_module_level():
    assert look(ROOT).module_cycles == []


def test_no_room_cycles():
    assert look(ROOT).cycles == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in ("mmdata", "mmtrain"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_each_kind_of_forbidden_import_is_caught(tmp_path):
    """The check can fail: a checkout with one forbidden import of each kind is refused, line by line."""
    root = _tree(tmp_path, {
        "mmdata/shard/__init__.py": "",
        "mmdata/shard/writer.py": "def f():\n    from mmdata.loader.plan import x\n",
        "mmdata/inspect/__init__.py": "",
        "mmdata/inspect/plan.py": "from ..loader import templates\n",
        "mmdata/loader/__init__.py": "",
        "mmdata/loader/plan.py": "x = 1\n",
        "mmdata/loader/templates.py": "",
        "mmdata/clean/__init__.py": "W = {'write': 'mmdata.shard.writer'}\n",
        "mmdata/format/__init__.py": "import mmdata.loader\n",
        "mmdata/io.py": "import torch\nfrom mmtrain import run\n",
        "mmtrain/run.py": "",
    })
    assert wall_breaches(look(root).edges) == [
        "clean imports shard: mmdata.clean:1 -> mmdata.shard.writer (str)",
        "format (below the stages) imports the stage loader: mmdata.format:1 -> mmdata.loader (top)",
        "inspect imports the loader: mmdata.inspect.plan:1 -> mmdata.loader.templates (top)",
        "io imports torch at module level: mmdata.io:1 -> torch (top)",
        "mmdata imports mmtrain: mmdata.io:2 -> mmtrain.run (top)",
        "shard imports the loader: mmdata.shard.writer:2 -> mmdata.loader.plan (fn)",
    ]


def test_allowed_imports_pass(tmp_path):
    """The same check lets through what the plan allows: stages on foundations, lazy torch, type-only names."""
    root = _tree(tmp_path, {
        "mmdata/loader/__init__.py": "import torch\nfrom mmdata.format import tar\n",
        "mmdata/format/__init__.py": "",
        "mmdata/format/tar.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mmdata.loader import x\n",
        "mmdata/codec.py": "def resize():\n    import torch\n",
        "mmtrain/run.py": "from mmdata.loader import PackedLoader\n",
    })
    lk = look(root)
    assert [e.kind for e in lk.edges if e.dst == "mmdata.loader" and e.src == "mmdata.format.tar"] == ["typing"]
    assert wall_breaches(lk.edges) == []
