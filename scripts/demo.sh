#!/usr/bin/env bash
# End to end on the bundled fixtures: set up, generate dirty data, clean -> shard -> inspect -> train.
# Usage: bash scripts/demo.sh [OUTDIR]   (default out/demo; everything is rebuilt from scratch)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out/demo}
BIN=.venv/bin
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "1/6 generate the dirty fixtures (COCO, LLaVA, messages; broken, rotated, CMYK, huge, thin images)"
$BIN/python -m fixtures.generate "$OUT/raw"

step "2/6 clean: every record ends in OUT or in the rejects file with a reason"
$BIN/mmdata clean coco "$OUT/raw/coco/captions.json" --images "$OUT/raw/images" --out "$OUT/clean/coco.json"
$BIN/mmdata clean llava "$OUT/raw/llava/llava.jsonl" --images "$OUT/raw/images" --out "$OUT/clean/llava.jsonl"
$BIN/mmdata clean llava "$OUT/raw/messages/messages.json" --images "$OUT/raw/images" --out "$OUT/clean/messages.json"

step "3/6 shard: webdataset tars capped to Qwen2-VL's visual-token budget, with index and manifest"
$BIN/mmdata shard "$OUT/clean/coco.json" "$OUT/clean/llava.jsonl" "$OUT/clean/messages.json" \
  --images "$OUT/raw/images" --out "$OUT/shards" --max-res 448 --max-image-tokens 256 --samples-per-shard 16

step "4/6 inspect: statistics, full verification, a contact sheet"
$BIN/mmdata inspect "$OUT/shards" --verify --contact-sheet "$OUT/contact-sheet.png"

step "5/6 train: a tiny Qwen2-VL-shaped model on the packed stream (CPU), with a checkpoint"
$BIN/mmtrain run --shards "$OUT/shards" --model tiny --seq-len 1024 --global-batch-size 4 \
  --max-steps 20 --log-interval 5 --lr 2e-3 --save "$OUT/ckpt" --save-interval 10 --device cpu

step "6/6 resume: load the checkpoint and continue to step 24"
$BIN/mmtrain run --shards "$OUT/shards" --model tiny --seq-len 1024 --global-batch-size 4 \
  --max-steps 24 --log-interval 2 --lr 2e-3 --load "$OUT/ckpt" --save "$OUT/ckpt" --device cpu

echo >&2
echo "done: outputs under $OUT (clean/, shards/, contact-sheet.png, ckpt/)" >&2
