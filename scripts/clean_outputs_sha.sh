#!/usr/bin/env bash
# Proof of behaviour-preserving clean changes: run on two trees, diff the outputs (issue 9 item 4).
# usage: sha.sh WORKTREE OUTDIR  -> prints sha256 of every clean output on fixtures + anchor data
set -e
W=$1; O=$2; rm -rf $O; mkdir -p $O
cd $W; P=.venv/bin/python
$P -m fixtures.generate $O/raw >/dev/null 2>&1
A=/work/shared/anchor-data
m() { $P -m mmdata.cli clean "$@" -q --workers 2; }
m coco $O/raw/coco/captions.json --images $O/raw/images --out $O/c/coco.json
m coco $O/raw/coco/captions.json --images $O/raw/images --out $O/c/coco_pc.jsonl --per-caption --out-format messages
m llava $O/raw/llava/llava.jsonl --images $O/raw/images --out $O/c/llava.jsonl
m llava $O/raw/llava/llava.jsonl --images $O/raw/images --out $O/c/llava_m.json --out-format messages --workers 1
m llava $O/raw/messages/messages.json --images $O/raw/images --out $O/c/messages.json
for f in captions_val2017_mini captions_train2017_mini; do m coco $A/coco/$f.json --images $A/coco/images --out $O/c/$f.json; done
for f in $A/llava/*.jsonl; do b=$(basename $f .jsonl); m llava $f --images $A/coco/images --out $O/c/$b.jsonl; done
m llava $A/messages/mllm_demo.json --images $A/messages --out $O/c/mllm_demo.json
m llava $A/messages/v1_multimodal_demo.jsonl --images $A/messages --out $O/c/v1.jsonl
cd $O/c && sha256sum * 
