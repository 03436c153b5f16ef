"""Decoding untrusted image bytes with limits, and encoding results.

The pixel limit is checked from the header, before any pixel is decoded, so a small file that
claims a huge canvas (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pixelrpc.models.errors import InvalidInput, LimitExceeded

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# PixelRPC enforces its own, configurable pixel limit from the header (below); PIL's global guard
# would otherwise refuse large headers with a less useful message before ours runs.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 48 * 1024 * 1024
    max_pixels: int = 36_000_000
    max_side: int = 1024  # enforced by iterative jobs, reported by describe_image


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str
    accepted: bool
    reason: str = ""


def _open(data: bytes, limits: ImageLimits, field: str) -> Image.Image:
    if not data:
        raise InvalidInput("the image is empty: send PNG, JPEG or WebP bytes", field=field)
    if len(data) > limits.max_bytes:
        raise LimitExceeded(
            f"the image is {len(data):,} bytes, over this server's limit of {limits.max_bytes:,} bytes "
            "(max_image_bytes); send a smaller or more compressed image"
        )
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(
            f"the image bytes could not be read as an image ({exc.__class__.__name__}); "
            f"send one of {', '.join(ACCEPTED_FORMATS)}", field=field,
        ) from None
    if img.format not in ACCEPTED_FORMATS:
        raise InvalidInput(
            f"image format {img.format} is not accepted; send one of {', '.join(ACCEPTED_FORMATS)}",
            field=field,
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the image header claims an empty canvas ({width}x{height})", field=field)
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"the image header claims {width}x{height} = {width * height:,} pixels, over this server's "
            f"limit of {limits.max_pixels:,} pixels (max_image_pixels); it was not decoded",
            field=field,
        )
    return img


def describe_image(data: bytes, limits: ImageLimits, field: str = "image") -> ImageInfo:
    img = _open(data, limits, field)
    width, height = img.size
    accepted, reason = True, ""
    if max(width, height) > limits.max_side:
        accepted = False
        reason = (f"longest side {max(width, height)} px is over max_image_side={limits.max_side}: "
                  "jobs that compute at the size sent refuse it; jobs that resize first "
                  "(style transfer, classification) check the size they compute at")
    return ImageInfo(img.format or "", width, height, img.mode, accepted, reason)


def decode_image(data: bytes, limits: ImageLimits, field: str = "image") -> Image.Image:
    """Decode untrusted bytes into an RGB PIL image, enforcing ``limits`` before decoding."""
    img = _open(data, limits, field)
    try:
        img.load()
    except Exception as exc:  # truncated or corrupt data surfaces here, with many exception types
        raise InvalidInput(f"the image data is corrupt or truncated ({exc})", field=field) from None
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.split()[-1])
            img = background
        else:
            img = img.convert("RGB")
    return img


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
