"""What one writer per ``s3://`` output costs: taking and releasing the lease, against moto's S3 server.

  .venv/bin/python benchmarks/bench_s3_lock.py [--cycles 30]

Per cycle: ``hold_output_lock(url)`` entered and left (GET of the absent lock, the conditional create,
the probe create that must fail, the conditional delete); reports wall and CPU ms per cycle and the
requests counted by a botocore hook. The heartbeat adds one PUT per lease/6 (10 s by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3_server import moto_s3  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=30)
    a = ap.parse_args()
    with moto_s3() as s:
        os.environ.update(s.env())
        from mmdata import storage
        from mmdata.format.lock import hold_output_lock

        url = f"s3://{s.bucket}/bench/out"
        storage.backend_for(url).check(url)
        calls: list[str] = []
        storage.backend_for(url).client.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
        with hold_output_lock(url):  # warm: clients made, connection open
            pass
        calls.clear()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(a.cycles):
            with hold_output_lock(url):
                pass
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        per = {n: calls.count(n) / a.cycles for n in sorted(set(calls))}
        print(f"cycles {a.cycles}: {1000 * wall / a.cycles:.1f} ms wall, {1000 * cpu / a.cycles:.1f} ms CPU per "
              f"acquire+release; requests per cycle {per}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
