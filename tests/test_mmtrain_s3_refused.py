"""`mmtrain run --save/--load s3://...` is refused in one line (exit 2) before any work: checkpoints on
object storage are not supported yet (CONTRACT s.6 lists them; this says so instead of writing s3:/...)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmdata.errors import InputError
from mmtrain.args import validate
from mmtrain.run import TrainArgs


@pytest.mark.parametrize("flag", ["save", "load"])
def test_validate_refuses_object_storage(flag):
    args = TrainArgs(shards=["synthetic"], model="tiny", **{flag: "s3://bkt/ckpt"})
    with pytest.raises(InputError, match=f"--{flag} s3://bkt/ckpt: object storage is not supported for checkpoints yet"):
        validate(args, 1)


def test_cli_save_on_s3_one_line_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--device", "cpu", "--shards", "synthetic",
                        "--model", "tiny", "--max-steps", "1", "--save", "s3://bkt/ckpt"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --save s3://bkt/ckpt: object storage is not supported")
    assert not list(tmp_path.iterdir())
