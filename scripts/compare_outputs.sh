#!/usr/bin/env bash
# Usage: scripts/compare_outputs.sh WORKTREE OUT -- fixtures -> clean -> shard (+ --tokenizer) -> inspect plan -> loader
# batches (float32 and uint8, seed 3, seq 1024); prints the batches' sha256 and every output file's sha256.
# Before/after a refactor: run it on a checkout of each commit (git archive C | tar -x -C DIR; ln -s the .venv) and diff.
set -euo pipefail
WT=$1; OUT=$2; PY=$WT/.venv/bin/python
if [ -e "$OUT" ] && [ ! -f "$OUT/.compare-outputs" ]; then
  echo "error: $OUT exists and was not made by this script; give a new folder" >&2; exit 2
fi
rm -rf "$OUT"; mkdir -p "$OUT"; touch "$OUT/.compare-outputs"
cd "$WT"
RAW=${RAW:-/tmp/mmdata-compare-raw}
if [ ! -d $RAW ]; then $PY -m fixtures.generate $RAW >/dev/null; fi
$PY -m mmdata.cli clean coco $RAW/coco/captions.json --images $RAW/images --out $OUT/clean/coco.json >/dev/null 2>&1 || true
$PY -m mmdata.cli clean llava $RAW/llava/llava.jsonl --images $RAW/images --out $OUT/clean/llava.jsonl >/dev/null 2>&1 || true
$PY -m mmdata.cli shard $OUT/clean/coco.json $OUT/clean/llava.jsonl --images $RAW/images --out $OUT/shards \
   --max-res 448 --max-image-tokens 256 --samples-per-shard 16 --workers 1 >/dev/null 2>&1 || echo "shard rc=$?"
$PY -m mmdata.cli shard $OUT/clean/coco.json --images $RAW/images --out $OUT/shards_tok --tokenizer mmdata/assets/tokenizer.json \
   --max-res 448 --samples-per-shard 16 --workers 1 >/dev/null 2>&1 || echo "shard tok rc=$?"
$PY -m mmdata.cli inspect $OUT/clean/coco.json --images $RAW/images --seq-len 1024 > $OUT/inspect_plan.txt 2>&1 || echo "inspect rc=$?"
$PY - "$OUT" <<'PY'
import sys, hashlib, numpy as np, torch
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
out = sys.argv[1]
tok = load_tokenizer(None)
h = hashlib.sha256()
for dtype in ("float32", "uint8"):
    for shards in (f"{out}/shards", f"{out}/shards_tok"):
        cfg = LoaderConfig(seq_len=1024, seed=3, pixel_dtype=dtype, epochs=1)
        ld = PackedLoader([shards], tok, cfg, num_workers=0)
        n = 0
        for b in ld:
            for k in sorted(b):
                v = b[k]
                if isinstance(v, torch.Tensor):
                    h.update(k.encode()); h.update(str(v.dtype).encode()); h.update(str(tuple(v.shape)).encode())
                    h.update(v.contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
                else:
                    h.update(k.encode()); h.update(repr(v).encode())
            n += 1
        print(dtype, shards.rsplit('/',1)[1], "batches", n)
print("loader_batches_sha256", h.hexdigest())
PY
cd $OUT && find shards shards_tok clean -type f | sort | xargs sha256sum | sed 's#^#  #' ; sha256sum inspect_plan.txt
