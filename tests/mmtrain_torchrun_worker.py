"""Run by tests/test_mmtrain_torchrun.py under a real `torchrun`: train() once per JSON run spec on
synthetic rows, and write rank 0's losses (and every rank's agreement) to OUT.json."""

from __future__ import annotations

import io
import json
import os
import sys

import torch
import torch.distributed as dist

from mmtrain.run import TrainArgs, synthetic_data, train


def main() -> None:
    runs, out = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    results = []
    for kw in runs:
        res = train(TrainArgs(**kw), synthetic_data, out=io.StringIO())
        results.append({str(k): v for k, v in res.losses.items()})
    rank = int(os.environ["RANK"])
    every: list = [None] * int(os.environ["WORLD_SIZE"])
    dist.all_gather_object(every, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"losses": results, "ranks_agree": all(r == results for r in every),
                       "world": dist.get_world_size(), "backend": dist.get_backend()}, f)
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
