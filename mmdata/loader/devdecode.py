"""Device-side JPEG decode (``LoaderConfig(image_decode="device")``): the workers ship each image's stored
JPEG bytes and its (h, w); the trainer decodes the row's JPEGs on the accelerator in one batched call.

Shards hold every image at exactly the size the processor feeds the model (CONTRACT s.3), so the bytes
need no resize: decode, then :func:`mmdata.models.patches.pixel_values_from_images` as for
``pixel_dtype="images"``. Backends: nvJPEG through ``torchvision.io.decode_jpeg(list, device="cuda")``,
Ascend DVPP through ``torchvision_npu`` (written from its README and source, **not measured on hardware**),
and a CPU backend (libjpeg-turbo via :func:`mmdata.loader.pixels.decode_into`, the loader's own CPU decode)
that runs the same plumbing in CI. Whatever a backend cannot do falls back to the CPU decode with one
log line saying why, never an error: no torchvision (or the registry's CUDA build beside a CPU torch,
which fails to import with ``operator torchvision::nms does not exist``), no accelerator, a member
that is not a YCbCr/grey JPEG (decoded in the worker, shipped as pixels), a JPEG the decoder refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmdata.loader.pixels import decode_exact

log = logging.getLogger("mmdata.loader")

IMAGE_DECODE = ("cpu", "device")  # LoaderConfig.image_decode
IMAGE_DECODE_FLAG = ("cpu", "device", "auto")  # mmtrain run --image-decode
SHIPPED_KEYS = ("image_bytes", "image_offsets", "image_sizes", "image_raw")
_SHIPPABLE = ("YCbCr", "Gray")  # what the device decoders turn into RGB as Pillow's convert("RGB") does
_said: set[str] = set()


def say_once(msg: str, level: int = logging.WARNING) -> None:
    """Log ``msg`` the first time this process meets it (a fallback is announced once, not per row)."""
    if msg not in _said:
        _said.add(msg)
        log.log(level, msg)


def _said_why(e: BaseException) -> str:
    """``Type: first line of the message``: an exception as one log line."""
    text = str(e).splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------------------------ worker side


def _why_not_shippable(data: bytes, h: int, w: int) -> str | None:
    """None when ``data`` is a YCbCr/grey JPEG of exactly h x w (shipped as is), else why not."""
    import simplejpeg

    try:
        hh, ww, space, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return "an image member that is not a JPEG"
    if space not in _SHIPPABLE:
        return f"a {space} JPEG (the device decoders make RGB from YCbCr or grey only)"
    if (hh, ww) != (h, w):
        return "a JPEG whose size differs from the json's"  # the CPU decode then names the mismatch
    return None


def ship_images(docs: list, shared_memory: bool = False) -> tuple[dict, list[tuple[int, str]], list[str]]:
    """The docs' images as the device-decode batch keys (:data:`SHIPPED_KEYS`): every image's stored
    JPEG bytes back to back in one uint8 buffer (shared memory if asked), ``image_offsets`` int64
    ``[N+1]``, ``image_sizes`` int64 ``[N, 2]`` (h, w) and ``image_raw`` bool ``[N]``: True where the
    worker decoded the image itself (not a YCbCr/grey JPEG) and the entry holds its ``[h, w, 3]`` pixels.
    Also returns, as :func:`mmdata.loader.batch.decode_images` does, ``(doc position, why)`` for each doc
    left out because an image of it does not decode, and why images were decoded here (for one log line)."""
    parts: list[bytes | np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    raw: list[bool] = []
    failed: list[tuple[int, str]] = []
    reasons: list[str] = []
    for j, d in enumerate(docs):
        mine, why_here = [], []
        for k, (data, (h, w)) in enumerate(zip(d.images, d.sizes)):
            why = _why_not_shippable(data, h, w)
            if why is None:
                mine.append((data, h, w, False))
                continue
            try:
                mine.append((decode_exact(data, h, w), h, w, True))
            except Exception as e:  # PIL raises many types on corrupt data
                failed.append((j, f"image {k}: {type(e).__name__}: {e}"))
                break
            why_here.append(why)
        else:
            parts += [m[0] for m in mine]
            sizes += [(m[1], m[2]) for m in mine]
            raw += [m[3] for m in mine]
            reasons += why_here
    return _pack(parts, sizes, raw, shared_memory), failed, reasons


def _pack(parts: list, sizes: list[tuple[int, int]], raw: list[bool], shared_memory: bool) -> dict:
    lens = np.fromiter((len(p) if isinstance(p, bytes) else p.nbytes for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    buf = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    if shared_memory and buf.numel():
        buf.share_memory_()
    arr = buf.numpy()
    for p, a, b in zip(parts, offsets[:-1].tolist(), offsets[1:].tolist()):
        arr[a:b] = np.frombuffer(p, dtype=np.uint8) if isinstance(p, bytes) else p.reshape(-1)
    return {"image_bytes": buf, "image_offsets": torch.from_numpy(offsets),
            "image_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
            "image_raw": torch.tensor(raw, dtype=torch.bool)}


def concat_shipped(rows: list[dict]) -> dict:
    """Several rows' shipped images as one (offsets moved along): for micro-batches of several rows."""
    out, at = [torch.zeros(1, dtype=torch.int64)], 0
    for r in rows:
        out.append(r["image_offsets"][1:] + at)
        at += int(r["image_offsets"][-1])
    return {"image_bytes": torch.cat([r["image_bytes"] for r in rows]), "image_offsets": torch.cat(out),
            "image_sizes": torch.cat([r["image_sizes"].reshape(-1, 2) for r in rows]),
            "image_raw": torch.cat([r["image_raw"] for r in rows])}


# ------------------------------------------------------------------------------------ decoders


@dataclass(frozen=True)
class JpegDecoder:
    """A batched JPEG decoder: CPU uint8 byte tensors and their (h, w) -> RGB uint8 images on ``device``
    (``[3, h, w]`` or ``[h, w, 3]``); raises when it cannot (the caller then decodes on the CPU)."""

    name: str
    decode: Callable[[list[torch.Tensor], list[tuple[int, int]], torch.device], list[torch.Tensor]]


def _cpu_decode(blobs: list[torch.Tensor], sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(decode_exact(b.numpy(), h, w)).to(device) for b, (h, w) in zip(blobs, sizes)]


CPU_DECODER = JpegDecoder("cpu (libjpeg-turbo)", _cpu_decode)  # the loader's own CPU decode: same pixels


def _torchvision_decoder(device_type: str) -> tuple[JpegDecoder | None, str]:
    """torchvision's batched ``decode_jpeg`` on ``device_type`` (nvJPEG on cuda; DVPP on npu once
    ``torchvision_npu`` has patched it in), imported lazily: any import error is a reason, not a crash."""
    try:
        if device_type == "npu":
            import torch_npu  # noqa: F401
        import torchvision.io as tvio
        if device_type == "npu":
            import torchvision_npu  # noqa: F401  (patches torchvision.io.decode_jpeg for device="npu")
        from torchvision.io import ImageReadMode
    except Exception as e:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        pkg = "torch_npu / torchvision / torchvision_npu" if device_type == "npu" else "torchvision"
        return None, f"{pkg} not importable ({_said_why(e)})"

    def decode(blobs, sizes, device):
        return tvio.decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)

    name = "DVPP via torchvision_npu (unmeasured)" if device_type == "npu" else "nvJPEG via torchvision"
    return JpegDecoder(name, decode), ""


def find_decoder(device: torch.device | str) -> tuple[JpegDecoder | None, str]:
    """The accelerator's JPEG decoder, probed with one small JPEG, or (None, why there is none)."""
    kind = device.split(":")[0] if isinstance(device, str) else device.type  # "npu" parses only after torch_npu
    if kind == "cuda" and not torch.cuda.is_available():
        return None, "no CUDA device is visible"
    if kind not in ("cuda", "npu"):
        return None, f"no JPEG decoder on device {kind} (cuda: nvJPEG, npu: DVPP)"
    dec, why = _torchvision_decoder(kind)
    if dec is None:
        return None, why
    try:
        _probe(dec, torch.device(device))
    except Exception as e:
        return None, f"{dec.name} failed a test decode ({_said_why(e)})"
    return dec, ""


def _probe(dec: JpegDecoder, device: torch.device) -> None:
    """Decode a 16x16 JPEG; raise unless it comes back as 16x16 RGB on ``device``."""
    import simplejpeg

    data = simplejpeg.encode_jpeg(np.full((16, 16, 3), 128, np.uint8), 90, "RGB", "420")
    out = dec.decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)], [(16, 16)], device)
    _hwc(out[0], 16, 16)
    if out[0].device.type != device.type:
        raise RuntimeError(f"decoded onto {out[0].device}, not {device}")


def resolve_image_decode(mode: str, device: torch.device | str) -> tuple[str, str]:
    """``--image-decode`` -> (the loader's ``image_decode``, the one line to log): ``device`` when the
    accelerator has a usable decoder (asked for as ``device`` or ``auto``), else ``cpu`` and why."""
    if mode not in IMAGE_DECODE_FLAG:
        raise ValueError(f"image decode must be one of {', '.join(IMAGE_DECODE_FLAG)}, got {mode!r}")
    if mode == "cpu":
        return "cpu", "image decode: cpu (the loader workers decode the JPEGs)"
    dec, why = find_decoder(device)
    if dec is None:
        return "cpu", f"image decode: cpu, not device (--image-decode {mode}): {why}"
    return "device", f"image decode: device (--image-decode {mode}): {dec.name} on {device}"


# ------------------------------------------------------------------------------------ trainer side


def _hwc(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A decoded image as ``[h, w, 3]`` uint8 (a view of ``[3, h, w]`` output); ValueError otherwise."""
    if t.dtype == torch.uint8 and tuple(t.shape) == (3, h, w):
        return t.permute(1, 2, 0)
    if t.dtype == torch.uint8 and tuple(t.shape) == (h, w, 3):
        return t
    raise ValueError(f"decoder returned {tuple(t.shape)} {t.dtype}, expected [3, {h}, {w}] uint8")


def _device_decode(dec: JpegDecoder, blobs: list[torch.Tensor], sizes: list[tuple[int, int]],
                   device: torch.device) -> list[torch.Tensor | None]:
    """One batched call; if it raises (it returns nothing then), image by image; None where refused."""
    try:
        outs = dec.decode(blobs, sizes, device)
        return [_hwc(o, h, w) for o, (h, w) in zip(outs, sizes)]
    except Exception as e:
        say_once(f"{dec.name}: a batched decode failed ({_said_why(e)}); "
                 "decoding that row image by image")
    got: list[torch.Tensor | None] = []
    for b, (h, w) in zip(blobs, sizes):
        try:
            got.append(_hwc(dec.decode([b], [(h, w)], device)[0], h, w))
        except Exception as e:
            say_once(f"{dec.name} refused an image ({_said_why(e)}); "
                     "such images are decoded on the CPU")
            got.append(None)
    return got


_default: dict[str, JpegDecoder] = {}


def decoder_for(device: torch.device) -> JpegDecoder:
    """The device's decoder, found once per device type; the CPU backend where there is none."""
    if device.type not in _default:
        dec, why = find_decoder(device) if device.type != "cpu" else (CPU_DECODER, "")
        if dec is None:
            say_once(f"shipped JPEGs decoded on the host, then copied to {device}: {why}")
            dec = CPU_DECODER
        _default[device.type] = dec
    return _default[device.type]


def decode_shipped(row: dict, device: torch.device | str, decoder: JpegDecoder | None = None) -> torch.Tensor:
    """A device-decode row's images -> the ``images`` buffer of ``pixel_dtype="images"`` (uint8, every
    image's ``[h, w, 3]`` back to back), on ``device``. JPEGs go to ``decoder`` (default: the device's,
    :func:`decoder_for`) in one batched call; worker-decoded entries are copied; anything the decoder
    refuses is decoded on the CPU. With the CPU backend the result is bit-identical to the CPU path."""
    device = torch.device(device)
    dec = decoder or decoder_for(device)
    data, offs = row["image_bytes"].cpu(), row["image_offsets"].tolist()  # decoders read host memory
    sizes = [tuple(s) for s in row["image_sizes"].reshape(-1, 2).tolist()]
    raw = row["image_raw"].tolist()
    starts = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum([h * w * 3 for h, w in sizes], out=starts[1:])
    out = torch.empty(int(starts[-1]), dtype=torch.uint8, device=device)
    jpeg = [i for i, r in enumerate(raw) if not r]
    decoded = _device_decode(dec, [data[offs[i]:offs[i + 1]] for i in jpeg], [sizes[i] for i in jpeg], device) if jpeg else []
    for i, img in zip(jpeg, decoded):
        h, w = sizes[i]
        if img is None:
            img = _host_decode(data[offs[i]:offs[i + 1]], h, w, row, i).to(device)
        out[starts[i]:starts[i + 1]].view(h, w, 3).copy_(img)
    for i in (i for i, r in enumerate(raw) if r):
        out[starts[i]:starts[i + 1]].copy_(data[offs[i]:offs[i + 1]], non_blocking=True)
    return out


def _host_decode(blob: torch.Tensor, h: int, w: int, row: dict, i: int) -> torch.Tensor:
    """The CPU decode of one shipped JPEG; a grey image (and a warning) if even that fails: the row was
    built already, so the sample cannot be left out here as the CPU path would (its header was checked)."""
    try:
        return torch.from_numpy(decode_exact(blob.numpy(), h, w))
    except Exception as e:
        log.warning("image %d of row %s does not decode (%s: %s): fed as a grey image", i,
                    row.get("sample_ids", "?"), type(e).__name__, e)
        return torch.full((h, w, 3), 128, dtype=torch.uint8)
