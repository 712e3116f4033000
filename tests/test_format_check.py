"""The one shard-folder check (mmdata.format.check): every problem of a folder found in one pass, the
same problems for `mmtrain doctor` (all listed), `mmtrain run`'s preflight and the loader (the first
fatal one refused in one line; truncations left to the bad-sample budget)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loader_helpers import make_records, write_shards

from mmdata.errors import InputError
from mmdata.format.check import MANIFEST, MISSING, REPLACED, TRUNCATED, UNLISTED, folder_problems
from mmtrain import doctor as dr
from mmtrain.preflight import check_shard_files


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("check") / "shards", make_records(20, seed=3), samples_per_shard=4)


def _damage(whole: Path, tmp: Path) -> Path:
    """Shard 1 deleted, 2 replaced by 3's bytes, 4 truncated, an unlisted shard added."""
    out = tmp / "bad"
    shutil.copytree(whole, out)
    (out / "shard-000001.tar").unlink()
    shutil.copyfile(out / "shard-000003.tar", out / "shard-000002.tar")
    data = (out / "shard-000004.tar").read_bytes()
    (out / "shard-000004.tar").write_bytes(data[:len(data) // 2])
    shutil.copyfile(out / "shard-000000.tar", out / "shard-000009.tar")
    return out


def test_a_whole_folder_has_no_problems(whole):
    assert folder_problems(whole)[0] == []


def test_every_problem_of_a_folder_is_found_in_one_pass(whole, tmp_path):
    out = _damage(whole, tmp_path)
    probs = folder_problems(out)[0]
    assert [(Path(p.path).name, p.kind) for p in probs] == [
        ("shard-000001.tar", MISSING), ("shard-000002.tar", REPLACED), ("shard-000004.tar", TRUNCATED),
        ("bad", UNLISTED)]
    assert probs[0].line() == f"{out / 'shard-000001.tar'}: shard file is missing (index.parquet lists 4 samples in it)"
    assert "replaced by another shard's bytes" in probs[1].what
    assert probs[2].what.startswith(f"{len(data_of(out, 4))} bytes, manifest.json says ") and len(probs[2].rows) >= 1
    assert [p.fatal for p in probs] == [True, True, False, False]


def data_of(out: Path, i: int) -> bytes:
    return (out / f"shard-{i:06d}.tar").read_bytes()


def test_a_missing_manifest_is_a_problem(whole, tmp_path):
    out = tmp_path / "noman"
    shutil.copytree(whole, out)
    (out / "manifest.json").unlink()
    (p,) = folder_problems(out)[0]
    assert p.kind == MANIFEST and p.fatal and p.path == str(out / "manifest.json")
    with pytest.raises(InputError, match="manifest.json: .*missing"):
        check_shard_files([str(out)])  # a folder with index but no manifest is not taken as bare tars


def test_index_rows_the_manifest_does_not_count_are_a_problem(whole, tmp_path):
    out = tmp_path / "count"
    shutil.copytree(whole, out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(m | {"samples": 21}))
    (p,) = folder_problems(out)[0]
    assert p.line() == f"{out / 'index.parquet'}: 20 rows, manifest.json says 21 samples" and p.fatal


def test_doctor_lists_every_problem_and_run_refuses_with_the_first(whole, tmp_path):
    out = _damage(whole, tmp_path)
    lines = [r.line() for r in dr.check_shards(dr.DoctorArgs(shards=[str(out)]), None)]
    assert len(lines) == 4 and all(ln.startswith("FAIL  shards") for ln in lines)
    for name in ("shard-000001.tar", "shard-000002.tar", "shard-000004.tar", "shard-000009.tar"):
        assert sum(name in ln for ln in lines) == 1, (name, lines)
    with pytest.raises(InputError) as e:
        check_shard_files([str(out)])
    assert str(e.value).startswith(f"{out / 'shard-000001.tar'}: shard file is missing") and "\n" not in str(e.value)
    assert f"mmdata inspect {out} --verify" in str(e.value)
