"""mmtrain: train a Qwen2-VL-shaped vision-language model on mmdata's packed stream (NPU / CUDA / CPU).

Once torch_npu is installed, ``import torch`` tries to load it (and fails without CANN) unless
``TORCH_DEVICE_BACKEND_AUTOLOAD=0``; we set that default before anything imports torch, and
import torch_npu ourselves, on demand (see ``mmtrain.accel``).
"""

import os

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

__all__ = ["accel", "checkpoint", "model", "run"]
