"""index.parquet is read on the calling thread: no Arrow pool worker is left holding the index's Python
bytes, whose release at interpreter exit aborted `mmtrain run` ("terminate called without an active
exception", SIGABRT instead of exit 2 on a missing shard)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CHILD = """
import os, pyarrow as pa
from mmdata.format.index import read_table
sink = pa.BufferOutputStream()
import pyarrow.parquet as pq
pq.write_table(pa.table({"k": list(range(1000))}), sink)
data = sink.getvalue().to_pybytes()
before = len(os.listdir("/proc/self/task"))
t = read_table(data)
print(before, len(os.listdir("/proc/self/task")), t.num_rows)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to count threads")
def test_reading_the_index_starts_no_thread():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    before, after, rows = map(int, r.stdout.split())
    assert rows == 1000
    assert after == before
