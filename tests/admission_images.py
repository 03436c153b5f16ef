"""Hostile-but-valid images for the admission tests, made without holding their pixels where possible.

``png_bytes`` streams constant rows through zlib, so a 1 x 10,000,000 PNG or a 24-megapixel one costs
the test process a few megabytes; JPEG and WebP need a real encoder, so ``jpeg_bytes`` and
``webp_bytes`` build a smooth gradient (it compresses well, like the issue's 3 MB 6000 x 6000 JPEG).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

# PNG colour types
GREY, RGB, PALETTE, GREY_ALPHA, RGBA = 0, 2, 3, 4, 6
_CHANNELS = {GREY: 1, RGB: 3, PALETTE: 1, GREY_ALPHA: 2, RGBA: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=32)
def png_bytes(width: int, height: int, color_type: int = RGB, bit_depth: int = 8, *, value: int = 90,
              palette: bytes | None = None, trns: bytes | None = None) -> bytes:
    """A valid PNG of constant rows (every sample byte ``value``), streamed row block by row block."""
    row_bytes = (width * _CHANNELS[color_type] * bit_depth + 7) // 8
    row = b"\0" + bytes([value]) * row_bytes  # filter type 0, then the samples
    rows_per_block = max(1, (1 << 22) // len(row))
    block = row * rows_per_block
    comp = zlib.compressobj(6)
    parts, done = [], 0
    while done < height:
        n = min(rows_per_block, height - done)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        done += n
    parts.append(comp.flush())
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type,
                                                              0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def palette_png(width: int, height: int) -> bytes:
    """A palette PNG whose index 0 (every pixel) is half transparent."""
    return png_bytes(width, height, PALETTE, value=0, palette=bytes(range(48)), trns=bytes([128, 255]))


def _gradient(width: int, height: int, mode: str) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    grey = Image.fromarray(((x + y) / 2).astype(np.uint8), "L")
    if mode == "L":
        return grey
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    return rgb if mode == "RGB" else rgb.convert(mode)


@functools.lru_cache(maxsize=16)
def jpeg_bytes(width: int, height: int, mode: str = "RGB", *, progressive: bool = False,
               quality: int = 60) -> bytes:
    buf = io.BytesIO()
    _gradient(width, height, mode).save(buf, "JPEG", quality=quality, progressive=progressive)
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def webp_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    _gradient(width, height, "RGB").save(buf, "WEBP", quality=40, method=0)
    return buf.getvalue()


def noise_png(seed: int = 0, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small PNG of seeded random RGB pixels, ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
