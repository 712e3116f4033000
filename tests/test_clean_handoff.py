"""Batch outputs come back from the clean workers through shared memory (`mmdata.clean.handoff`), and
the bytes written are the same as with one process, also when a batch does not fit a slot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdata.clean import clean_llava, engine, fastread, handoff
from mmdata.clean.sources import llava


def _records() -> list[dict]:
    recs = []
    for i in range(600):  # ~150 KB: more than the splitter's first 64 KB read
        rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": f" question {i % 450} "},
                                                {"from": "gpt", "value": f"answer {i % 450}\u00e9 " + "w" * 200}]}
        if i % 97 == 5:
            del rec["id"]  # a default id from the record's position
        if i % 53 == 7:
            rec["conversations"][1]["value"] = " "  # empty_turn
        if i % 61 == 3:
            rec["id"] = "r1"  # duplicate_id
        recs.append(rec)
    return recs  # i and i + 450 share a conversation: duplicate_sample


def _write(tmp_path: Path, fmt: str) -> Path:
    recs = _records()
    p = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    else:
        p.write_text(json.dumps(recs, indent=1))
    (tmp_path / "img").mkdir(exist_ok=True)
    return p


def _clean(src: Path, tmp_path: Path, name: str, workers: int) -> tuple[bytes, bytes]:
    out = tmp_path / f"{name}.jsonl"
    clean_llava(src, tmp_path / "img", out, workers=workers)
    return out.read_bytes(), (tmp_path / f"{name}.rejects.jsonl").read_bytes()


@pytest.fixture
def small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastread, "_LINE_BLOCK", 4000)  # ~20 spans of JSON Lines after the first
    monkeypatch.setattr(llava, "_BATCH", 25)  # 24 spans of a JSON array
    monkeypatch.setattr(llava, "_INLINE_BYTES", 0)  # parse in the workers, however small the input


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_two_workers_hand_back_through_shared_memory_same_bytes(fmt: str, tmp_path: Path, small_spans,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write(tmp_path, fmt)
    one = _clean(src, tmp_path, "one", 1)
    seen: list[int] = []
    view = handoff.Slots.view
    monkeypatch.setattr(handoff.Slots, "view", lambda self, held: seen.append(held.length) or view(self, held))
    assert _clean(src, tmp_path, "two", 2) == one
    assert len(seen) > 10 and sum(seen) >= len(one[0])  # every batch (duplicates are dropped after)
    assert b"duplicate_sample" in one[1] and b"duplicate_id" in one[1] and b"empty_turn" in one[1]


def test_batches_larger_than_a_slot_come_back_pickled_same_bytes(tmp_path: Path, small_spans,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write(tmp_path, "jsonl")
    one = _clean(src, tmp_path, "one", 1)
    monkeypatch.setattr(handoff, "_SLOT_BYTES", 64)
    seen: list[int] = []
    monkeypatch.setattr(handoff.Slots, "view", lambda self, held: seen.append(held.length))
    assert _clean(src, tmp_path, "two", 2) == one
    assert seen == []  # no batch fitted


def test_a_worker_without_the_area_returns_its_bytes(tmp_path: Path) -> None:
    """A slot of an area this process does not hold (a spawned worker, a pool forked before it)."""
    b = engine.structure_objects([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
                                 0, engine.StructureOptions("s", "auto", False, False), slot=(-1, 0))
    assert b.out == b'{"id":"s-0","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}]}\n'
