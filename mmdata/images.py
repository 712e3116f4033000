"""Image probing and verification: real format from the bytes, size after EXIF, full decode check.

No knowledge of records. Used by clean (every image checked once), shard and inspect.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow is imported on first use: a text-only clean never needs it
    from PIL import Image

__all__ = [
    "ImageInfo",
    "ImageError",
    "sniff_format",
    "exif_orientation",
    "verify_image_bytes",
    "verify_image_file",
    "DEFAULT_MAX_PIXELS",
    "ImageRoot",
    "TRANSPOSED_ORIENTATIONS",
]

# Pillow's own bomb threshold is 2 x MAX_IMAGE_PIXELS (~179 MP); we reject at the same size by
# default, as a reason code instead of an exception, and let users choose their limit.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

# EXIF orientations 5..8 swap width and height when applied (the one definition: shard and inspect use it).
TRANSPOSED_ORIENTATIONS = frozenset((5, 6, 7, 8))


class ImageError(Exception):
    """An image that cannot be used: ``reason`` is a clean reject code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class ImageInfo:
    """What a full decode told us. ``width``/``height`` are after EXIF orientation."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int
    nbytes: int


def sniff_format(head: bytes) -> str | None:
    """The image format from its first bytes (the name of a file proves nothing)."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def exif_orientation(img: Image.Image) -> int:
    """EXIF Orientation tag (1..8), 1 when absent or invalid."""
    try:
        o = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def verify_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode ``data`` completely (cheaply) and describe it, or raise ImageError(unreadable_image).

    JPEGs are decoded with DCT scaling (draft mode): every entropy-coded byte is still read, so a
    truncated file is caught, at a fraction of the cost of a full-size decode.
    """
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whoever set this before
    if not data:
        raise ImageError("unreadable_image", "zero-byte file")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageError("unreadable_image", "not an image (unknown file signature)")
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS; our own ``max_pixels`` check below decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    "unreadable_image", f"decompression bomb: {w}x{h} = {w * h / 1e6:.0f} MP > {max_pixels / 1e6:.0f} MP"
                )
            orientation = exif_orientation(img)
            mode = img.mode
            if fmt == "JPEG":
                img.draft(img.mode if img.mode in ("L", "RGB", "CMYK") else "RGB", (max(1, w // 8), max(1, h // 8)))
            img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError("unreadable_image", f"decompression bomb: {e}") from None
        except Exception as e:  # PIL raises many types for broken data
            msg = str(e) or type(e).__name__
            raise ImageError("unreadable_image", f"{fmt} does not decode: {msg}") from None
    if orientation in TRANSPOSED_ORIENTATIONS:
        w, h = h, w
    return ImageInfo(format=fmt, width=w, height=h, mode=mode, orientation=orientation, nbytes=len(data))


def verify_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """verify_image_bytes on a file; a missing file is ImageError(missing_image)."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError("missing_image", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageError("missing_image", f"is a directory: {path}") from None
    except OSError as e:
        raise ImageError("unreadable_image", f"cannot read {path}: {e.strerror or e}") from None
    return verify_image_bytes(data, max_pixels)


class ImageRoot:
    """The folder image paths are relative to, and the containment rule (the one definition: clean
    and shard use it): a path resolves, symlinks followed, to a real file inside the folder."""

    def __init__(self, root: str | os.PathLike):
        self.real = os.path.realpath(root)
        self.prefix = self.real.rstrip(os.sep) + os.sep

    def resolve(self, p: str) -> str | None:
        """The real path of ``p`` (relative to the root), or None when it resolves outside the root."""
        real = os.path.realpath(os.path.join(self.real, p))
        return real if real.startswith(self.prefix) else None
