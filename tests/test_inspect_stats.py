"""`mmdata inspect` summary: exact numbers from index + manifest, the JSON face, cheap consistency checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmdata.cli import app
from mmdata.inspect.stats import IntHist, inspect_shards
from test_inspect_kit import CLEAN_SPECS, write_dataset

TOKENS = [192, 192, 64, 208, 0, 144, 32]  # per sample, from the specs (qwen2vl, 28 px per token side)
CHARS = [len(s["sizes"]) + len(s["human"]) + len(s["gpt"]) for s in CLEAN_SPECS]  # "<image>\n" counts its "\n"


def _q(values, q):
    x = float(np.percentile(values, q))
    return int(x) if x.is_integer() else round(x, 3)


@pytest.fixture()
def ds(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", CLEAN_SPECS)
    return tmp_path / "ds"


def test_clean_data_set_summary_is_exact(ds: Path) -> None:
    s = inspect_shards([ds])
    assert s["samples"] == 7 and s["shards"] == 3
    assert s["bytes"] == sum(p.stat().st_size for p in ds.glob("*.tar"))
    assert s["image_tokens"] == {"min": 0, "p50": 144, "mean": round(sum(TOKENS) / 7, 3), "p95": _q(TOKENS, 95),
                                 "max": 208}
    assert s["image_tokens_total"] == 832
    assert s["text_chars"]["min"] == min(CHARS) and s["text_chars"]["max"] == max(CHARS)
    assert s["text_chars"]["p50"] == _q(CHARS, 50)
    assert s["images"] == 7
    assert s["images_per_sample_counts"] == {"0": 1, "1": 5, "2": 1}
    assert s["sources"] == {"coco": 4, "llava": 2, "text": 1}
    r = s["resolution"]
    assert r["long_side"]["min"] == 112 and r["long_side"]["max"] == 448
    assert r["short_side"]["min"] == 56
    assert r["common_sizes"][0] == {"size": "448x336", "count": 2}
    assert r["at_max_res"] == 5
    assert s["rejected_at_shard_time"] == 1
    assert s["stats_from"] == "index"
    assert s["text_tokens"] is None
    assert s["errors"] == []


def test_summary_reads_no_tar(ds: Path) -> None:
    for tar in ds.glob("*.tar"):  # same size, garbage content: the summary must not notice
        tar.write_bytes(b"\xff" * tar.stat().st_size)
    assert inspect_shards([ds])["errors"] == []


def test_tars_given_directly_use_the_index_beside_them(ds: Path) -> None:
    s = inspect_shards([ds / "shard-000001.tar"])
    assert (s["samples"], s["shards"], s["stats_from"]) == (3, 1, "index")
    assert s["image_tokens"]["max"] == 208 and s["image_tokens"]["min"] == 0


def test_tars_without_index_are_read(ds: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ds / "shard-000001.tar", lone / "x.tar")
    s = inspect_shards([lone / "x.tar"])
    assert (s["samples"], s["shards"], s["stats_from"]) == (3, 1, "tars")
    assert s["image_tokens"] == {"min": 0, "p50": 144, "mean": round((208 + 0 + 144) / 3, 3), "p95": _q([208, 0, 144], 95),
                                 "max": 208}
    assert s["text_chars"]["max"] == max(CHARS[3:6])
    assert s["errors"] == []
    assert inspect_shards([lone])["samples"] == 3  # a plain folder of tars too


def test_json_flag_prints_one_object_and_nothing_else(ds: Path) -> None:
    res = CliRunner().invoke(app, ["inspect", str(ds), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for k in ("samples", "shards", "bytes", "image_tokens", "errors"):
        assert k in out
    assert set(out["image_tokens"]) == {"min", "p50", "mean", "p95", "max"}
    assert out["errors"] == []


def test_manifest_count_mismatch_is_an_error_without_verify(ds: Path) -> None:
    m = json.loads((ds / "manifest.json").read_text())
    m["shards"][1]["samples"] = 4
    (ds / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(app, ["inspect", str(ds), "--json"])
    assert res.exit_code == 1
    errs = json.loads(res.stdout)["errors"]
    assert {"shard": "shard-000001.tar", "key": None, "message": "index has 3 samples, manifest says 4",
            "code": "count_mismatch"} in errs
    assert any(e["code"] == "count_mismatch" and e["shard"] == "-" for e in errs)  # 7 != 3 + 4 + 1


def test_missing_and_resized_shards_are_named(ds: Path) -> None:
    (ds / "shard-000002.tar").unlink()
    with open(ds / "shard-000000.tar", "ab") as f:
        f.write(b"\0" * 512)
    errs = inspect_shards([ds])["errors"]
    codes = {(e["shard"], e["code"]) for e in errs}
    assert ("shard-000002.tar", "missing_shard") in codes
    assert ("shard-000000.tar", "bytes_mismatch") in codes


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    (tmp_path / "empty").mkdir()
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no shards here" in res.stderr and "Traceback" not in res.stderr


def test_exit_code_reaches_the_shell(ds: Path) -> None:
    (ds / "shard-000002.tar").unlink()
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(ds)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "shard-000002.tar: shard listed in manifest.json is missing" in res.stdout


def test_int_hist_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.integers(0, 5000, 997), rng.integers(2_000_000, 3_000_000, 5)])
    h = IntHist()
    h.add(vals[:500])
    other = IntHist()
    other.add(vals[500:])
    h.merge(other)
    for q in (0.0, 0.5, 0.95, 1.0):
        assert h.quantile(q) == pytest.approx(float(np.percentile(vals, q * 100)))
    assert h.summary()["max"] == int(vals.max()) and h.n == len(vals)


def test_inspect_never_imports_torch(ds: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from mmdata.cli import app\n"
        f"r = CliRunner().invoke(app, ['inspect', {str(ds)!r}, '--verify', '--samples', '2', '--json', "
        f"'--contact-sheet', {str(tmp_path / 'c.png')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "from mmdata.inspect.plan import pack_rows\n"
        "import numpy as np\n"
        "print(pack_rows(np.array([3, 2, 2]), 4)[1])\n"
        "print('torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    method, torch_loaded = res.stdout.strip().splitlines()[-2:]
    assert torch_loaded == "False"


def test_manifest_path_means_its_folder(ds: Path) -> None:
    assert inspect_shards([ds / "manifest.json"])["samples"] == 7


def test_broken_json_in_a_tar_without_index(ds: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    row = next(r for r in pq.read_table(ds / "index.parquet").to_pylist() if r["key"] == "000000004")
    data = bytearray((ds / "shard-000001.tar").read_bytes())
    data[row["offset"] + 512] = ord("X")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "x.tar").write_bytes(bytes(data))
    s = inspect_shards([lone / "x.tar"])
    assert s["samples"] == 3
    assert [(e["shard"], e["key"], e["code"]) for e in s["errors"]] == [("x.tar", "000000004", "bad_json")]


def test_empty_data_set(tmp_path: Path) -> None:
    write_dataset(tmp_path / "e", [])
    s = inspect_shards([tmp_path / "e"])
    assert (s["samples"], s["shards"], s["errors"]) == (0, 0, [])
    assert s["image_tokens"] == {"min": 0, "p50": 0, "mean": 0.0, "p95": 0, "max": 0}


def test_text_tokens_column_is_summarised(ds: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(ds / "index.parquet")
    t = t.append_column("text_tokens", pa.array([30, 31, 40, -1, 12, 33, 30], pa.int32()))  # -1: not renderable
    pq.write_table(t, ds / "index.parquet")
    s = inspect_shards([ds])
    assert s["text_tokens"] == {"min": 12, "p50": 30.5, "mean": round(176 / 6, 3), "p95": _q([30, 31, 40, 12, 33, 30], 95),
                                "max": 40}
