"""Contact sheet, histograms and --samples: real PNGs of the expected size, samples picked evenly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmdata.cli import app
from mmdata.inspect.pictures import contact_sheet, plot_histograms
from mmdata.inspect.samples import pick_samples
from mmdata.inspect.stats import histograms
from test_inspect_kit import CLEAN_SPECS, write_dataset


@pytest.fixture()
def ds(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", CLEAN_SPECS)
    return tmp_path / "ds"


def test_contact_sheet_grid(ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    info = contact_sheet([ds], out, n=16, thumb=200)
    assert info["samples"] == 7  # all of them: fewer than asked
    with Image.open(out) as im:
        assert im.format == "PNG"
        # 3 x 3 grid: 12 px margin + 3 cells of (200 + 12) wide, (200 + 52 label + 12) high
        assert im.size == (12 + 3 * 212, 12 + 3 * 264) == (info["width"], info["height"])
        rgb = im.convert("RGB")
        # sample 0 is a 448x336 gradient thumbnailed to 200x150, centred in the first 200x200 box
        assert rgb.getpixel((12 + 100, 12 + 100)) != rgb.getpixel((12 + 100, 12 + 5))


def test_damaged_image_gets_a_cell_not_a_crash(ds: Path, tmp_path: Path) -> None:
    import tarfile

    tar = ds / "shard-000000.tar"
    with tarfile.open(tar) as tf:
        m = tf.getmember("000000000.jpg")
    data = bytearray(tar.read_bytes())
    data[m.offset_data: m.offset_data + 4] = b"\0\0\0\0"
    tar.write_bytes(bytes(data))
    info = contact_sheet([ds], tmp_path / "s.png", n=2)
    assert info["samples"] == 2


def test_histograms_png(ds: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "h.png"
    plot_histograms(histograms([ds]), out)
    with Image.open(out) as im:
        assert im.size == (1100, 750)


def test_samples_are_spread_evenly_and_read_by_offset(ds: Path) -> None:
    shown = pick_samples([ds], 3)
    assert [(s.shard, s.key) for s in shown] == [("shard-000000.tar", "000000000"), ("shard-000000.tar", "000000002"),
                                                 ("shard-000001.tar", "000000004")]
    assert shown[1].record["id"] == "img.2" and len(shown[1].images) == 1
    assert shown[2].images == []  # the text-only sample


def test_cli_samples_and_pictures(ds: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["inspect", str(ds), "--samples", "2", "--json", "--contact-sheet",
                                   str(tmp_path / "c.png"), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [s["key"] for s in out["shown"]] == ["000000000", "000000003"]
    assert out["shown"][1]["record"]["conversations"][0]["value"] == "<image>\n<image>\nCompare them."
    assert (tmp_path / "c.png").is_file() and (tmp_path / "p.png").is_file()
    res = CliRunner().invoke(app, ["inspect", str(ds), "--samples", "1"])
    assert "image 0: 448x336 stored (source 448x336), 192 tokens" in res.stdout
    assert "gpt: Answer number 0." in res.stdout


@pytest.mark.parametrize("flag", ["--contact-sheet", "--plot"])
def test_unwritable_output_is_one_line_exit_2_before_the_work(ds: Path, tmp_path: Path, flag: str) -> None:
    import subprocess
    import sys

    (tmp_path / "afile").write_text("x")
    for out in ("/proc/nope/x.png", str(tmp_path / "afile" / "x.png"), str(tmp_path)):
        res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(ds / "nope"), flag, out],
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
        # checked before the data set is even opened (ds/nope does not exist)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert res.stderr.startswith(f"error: {out}: {flag}: "), res.stderr
