#!/usr/bin/env bash
# Device check of issue 13 item 2 (device-side JPEG decode) on a lent NVIDIA GPU: about 2-4 minutes.
#
# 1. Here, in the repo root, once (the device image lacks these two; everything else is there):
#      grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#        -d .whl simplejpeg==1.9.0 orjson==3.13.0
# 2. With the device tool:  run(command="bash scripts/device_check_decode.sh", carry=[".whl"], timeout_s=480)
#
# Writes under $OUT: gpu.txt (card, driver, torch/torchvision), tests.log (tests/test_loader_devdecode.py,
# with its CUDA tests: nvJPEG pixels vs the CPU decode, mmtrain --image-decode auto), bench.log and
# bench_w1.json / bench_w4.json (benchmarks/bench_device_decode.py, cpu vs device, 1 and 4 loader workers).
set -uo pipefail
OUT=${OUT:-/tmp/device_check_decode}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; uptime
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } 2>&1 | tee "$OUT/gpu.txt"
timeout 180 python3 -m pytest -q -p no:cacheprovider -rs tests/test_loader_devdecode.py 2>&1 | tee "$OUT/tests.log"
for w in 1 4; do
  timeout 150 python3 benchmarks/bench_device_decode.py --device cuda --records 1200 --workers $w --rounds 2 \
    --workdir /tmp/bench_device_decode --json "$OUT/bench_w$w.json" 2>&1 | tee -a "$OUT/bench.log"
done
