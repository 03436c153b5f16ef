"""Decoding untrusted image bytes with every size decided from the header, and encoding results.

Nothing is allocated before the sizes are known. ``read_header`` opens the image lazily (Pillow reads
the header only) and checks the bytes and the canvas; ``plan_working`` computes, still from the
header, the region of the image a job uses and the size it works at, and what decoding will cost;
``decode_working`` then decodes one image straight to that working size with the least memory the
format allows. So a small file that claims a huge or absurdly elongated canvas (a decompression
bomb, a 1 x 10,000,000 strip) is refused before any pixel is decoded, and an accepted image costs
its decoded size once, never a resized copy of it.

Memory, measured with Pillow 12 (bytes per pixel of the canvas while decoding): 1 for 1-bit, grey
and palette images, 2 for 16-bit grey, 4 for everything else (Pillow stores RGB as RGBX); a
progressive (or multi-scan) JPEG also keeps 2 bytes per coefficient of every component for the whole
image; WebP passes through four full-size RGBA buffers. ``decode_cost`` expresses this in *decoded
pixels* of 4 bytes, the unit of every pixel limit (``max_image_pixels``, ``max_request_pixels``,
``max_pixels_in_flight``): an RGB PNG costs its pixel count, a progressive 4:4:4 JPEG 1.5 times it
(plus its output), a WebP 4 times it.

How an image gets to its working size (``resample_box``): only the region the job uses is resampled
(``Image.resize(size, box=...)``), so a crop never materialises the whole resized image; a JPEG much
larger than its working size is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``, the DCT does it
for free); any other big region is first block-averaged (``Image.reduce``) to no less than
``REDUCING_GAP`` times the working resolution, and mode conversions (palette, 16-bit, CMYK, alpha)
of big regions run on strips, so they never double the decoded size. Images up to
``REDUCE_ABOVE`` pixels take the plain path (convert, then resample), as before.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pixelrpc.models.errors import InvalidInput, LimitExceeded

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# PixelRPC enforces its own, configurable pixel limit from the header (below); PIL's global guard
# would otherwise refuse large headers with a less useful message before ours runs.
Image.MAX_IMAGE_PIXELS = None

# Images (or regions) larger than this are reduced before the final filter and converted in strips;
# smaller ones take the plain path, so results on ordinary images are those of a plain resize.
REDUCE_ABOVE = 4_000_000
# A reduction (DCT scaling or block averaging) keeps at least this many source pixels per working
# pixel for the final filter: Pillow's documented setting for results indistinguishable from a
# full-resolution resize.
REDUCING_GAP = 3.0
STRIP_PIXELS = 1 << 20  # pixels per strip when converting a big region's mode
WEBP_COST = 4  # decoded pixels per WebP pixel: libwebp's canvas, its copy, the raw buffer, the image
_FILTER_SUPPORT = {Image.Resampling.NEAREST: 0.5, Image.Resampling.BOX: 0.5, Image.Resampling.BILINEAR: 1.0,
                   Image.Resampling.HAMMING: 1.0, Image.Resampling.BICUBIC: 2.0, Image.Resampling.LANCZOS: 3.0}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 48 * 1024 * 1024
    max_pixels: int = 24_000_000  # decoded pixels of one image (see the module docstring)
    max_side: int = 1024  # enforced by iterative jobs, reported by describe_image
    max_aspect: float = 32.0  # longest side / shortest side
    max_upscale: float = 32.0  # working side / shortest side
    max_request_pixels: int = 192_000_000  # decoded pixels summed over one request's images


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image says; nothing is decoded."""

    format: str
    mode: str
    width: int
    height: int
    field: str = "image"
    coefficient_buffer: bool = False  # a JPEG decoded through whole-image coefficients (progressive, multi-scan)
    samples: float = 0.0  # a JPEG's samples per pixel over its components (3 for 4:4:4 RGB, 1.5 for 4:2:0)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def described(self) -> str:
        if self.format == "JPEG" and self.coefficient_buffer:
            return f"{self.width}x{self.height} progressive {self.mode} JPEG"
        return f"{self.width}x{self.height} {self.mode} {self.format}"


@dataclass(frozen=True)
class WorkingPlan:
    """How one image becomes what a job works on, decided from its header.

    ``geometry`` says which region of the image becomes the output and at what size; ``draft`` is the
    JPEG DCT scale (1, 2, 4 or 8) used while decoding; ``cost`` the decoder's peak memory in decoded
    pixels (4 bytes each).
    """

    header: ImageHeader
    geometry: Geometry
    resample: int
    draft: int
    cost: int

    @property
    def size(self) -> tuple[int, int]:
        return self.geometry.size


# ---------------------------------------------------------------------- header
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


def _header_of(img: Image.Image, data: bytes, field: str) -> ImageHeader:
    width, height = img.size
    coefficients, samples = False, 0.0
    if img.format == "JPEG":
        layers = [(h, v) for _id, h, v, _q in getattr(img, "layer", [])] or [(1, 1)] * len(img.getbands())
        hmax, vmax = max(h for h, _ in layers), max(v for _, v in layers)
        samples = sum(h * v for h, v in layers) / (hmax * vmax)
        # libjpeg keeps every coefficient of the image when the data comes in several scans:
        # progressive JPEGs, and sequential ones split into scans.
        coefficients = bool(img.info.get("progressive")) or _jpeg_has_several_scans(data)
    return ImageHeader(img.format or "", img.mode, width, height, field, coefficients, samples)


def _jpeg_has_several_scans(data: bytes) -> bool:
    """Whether a JPEG has a second SOS marker: walk the segments to the first SOS (skipping APPn
    bodies, where EXIF thumbnails live), then one C-speed search of the entropy-coded data, where a
    0xFF byte is always stuffed, so 0xFFDA can only be a marker. Unparseable data counts as several."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return data.find(b"\xff\xda", pos + 2 + length) != -1
        pos += 2 + length
    return True


def read_header(data: bytes, limits: ImageLimits, field: str = "image") -> ImageHeader:
    """The header of untrusted bytes, checked against ``max_image_bytes`` and ``max_image_pixels``."""
    return _header_of(_open(data, limits, field), data, field)


def describe_image(data: bytes, limits: ImageLimits, field: str = "image") -> ImageInfo:
    img = _open(data, limits, field)
    header = _header_of(img, data, field)
    width, height = img.size
    reasons = []
    if max(width, height) > limits.max_side:
        reasons.append(f"longest side {max(width, height)} px is over max_image_side={limits.max_side}: "
                       "jobs that compute at the size sent refuse it; jobs that resize first "
                       "(style transfer, classification) check the size they compute at")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        reasons.append(f"aspect ratio {aspect:,.1f}:1 is over max_image_aspect={limits.max_aspect:g}")
    cost = decode_cost(header)
    if cost > limits.max_pixels:
        reasons.append(f"decoding it takes {cost:,} decoded pixels of memory, over max_image_pixels="
                       f"{limits.max_pixels:,}")
    return ImageInfo(img.format or "", width, height, img.mode, not reasons, "; ".join(reasons))


# ---------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Geometry:
    """Shorter side to ``side``, then centre-crop if asked: arithmetic on the header's size.

    ``resized`` is the size the whole image would be resized to, ``crop`` the square kept (in resized
    coordinates, None without cropping); ``box`` is the same square in source coordinates and ``size``
    the output size.
    """

    source: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int] | None

    @property
    def size(self) -> tuple[int, int]:
        return (self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]) if self.crop else self.resized

    @property
    def box(self) -> tuple[float, float, float, float]:
        (w, h), (rw, rh) = self.source, self.resized
        if self.crop is None:
            return (0.0, 0.0, float(w), float(h))
        sx, sy = w / rw, h / rh
        return (self.crop[0] * sx, self.crop[1] * sy, self.crop[2] * sx, self.crop[3] * sy)


def working_box(width: int, height: int, side: int, crop: bool) -> Geometry:
    """The geometry of resizing to ``(max(side, round(w * s)), max(side, round(h * s)))`` with
    ``s = side / min(w, h)`` and, if ``crop``, keeping the centred ``side`` x ``side``. No image is touched."""
    scale = side / min(width, height)
    new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
    if not crop:
        return Geometry((width, height), (new_w, new_h), None)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    return Geometry((width, height), (new_w, new_h), (left, top, left + side, top + side))


def check_geometry(width: int, height: int, side: int, limits: ImageLimits, field: str = "image") -> None:
    """Refuse an image too elongated, or too small for ``side``, before anything is allocated."""
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise InvalidInput(
            f"the image is {width}x{height}, an aspect ratio of {aspect:,.1f}:1, over this server's limit "
            f"of {limits.max_aspect:g}:1 (max_image_aspect); crop it to the part that matters", field=field)
    upscale = side / min(width, height)
    if upscale > limits.max_upscale:
        raise InvalidInput(
            f"the image is {width}x{height}: working at {side} px on its shorter side would upscale it "
            f"{upscale:,.1f} times, over this server's limit of {limits.max_upscale:g} (max_image_upscale); "
            "send a larger image", field=field)


def _draft_scale(header: ImageHeader, box, size) -> int:
    """The JPEG DCT scale that keeps ``REDUCING_GAP`` source pixels per working pixel (1: none)."""
    if header.format != "JPEG" or header.pixels <= REDUCE_ABOVE:
        return 1
    scale = min((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1])
    return next((k for k in (8, 4, 2) if k * REDUCING_GAP <= scale), 1)


def decode_cost(header: ImageHeader, draft: int = 1) -> int:
    """The decoder's peak memory for ``header`` in decoded pixels (4 bytes), measured per format."""
    w, h = header.width, header.height
    out = math.ceil(w / draft) * math.ceil(h / draft)
    if header.format == "WEBP":
        return WEBP_COST * w * h
    if header.format == "JPEG" and header.coefficient_buffer:
        return out + math.ceil(w * h * header.samples / 2)  # 2 bytes per coefficient, whatever the scale
    return out


def plan_working(header: ImageHeader, side: int, *, crop: bool, resample: int, limits: ImageLimits) -> WorkingPlan:
    """Everything about one image's decode, from its header: refuses what is beyond ``limits``.

    Refusals are INVALID_ARGUMENT naming the setting and the value: aspect ratio (``max_image_aspect``),
    upscale (``max_image_upscale``), the working size and the decoding memory (``max_image_pixels``).
    """
    w, h, field = header.width, header.height, header.field
    check_geometry(w, h, side, limits, field)
    geometry = working_box(w, h, side, crop)
    size = geometry.size
    if size[0] * size[1] > limits.max_pixels:
        raise InvalidInput(
            f"the image is {w}x{h}: the job would work on {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
            f"over this server's limit of {limits.max_pixels:,} (max_image_pixels)", field=field)
    draft = _draft_scale(header, geometry.box, size)
    cost = decode_cost(header, draft)
    if cost > limits.max_pixels:
        why = ("WebP decodes through four full-size RGBA buffers" if header.format == "WEBP" else
               "a progressive JPEG keeps 2 bytes per coefficient of the whole image while decoding")
        raise InvalidInput(
            f"the image is a {header.described}: decoding it takes the memory of {cost:,} decoded pixels "
            f"({why}), over this server's limit of {limits.max_pixels:,} (max_image_pixels); send a smaller "
            "image, or a PNG or baseline JPEG", field=field)
    return WorkingPlan(header, geometry, resample, draft, cost)


def check_request(plans: list[WorkingPlan], limits: ImageLimits) -> int:
    """The decoded pixels of one request's images; LimitExceeded over ``max_request_pixels``."""
    total = sum(p.cost for p in plans)
    if total > limits.max_request_pixels:
        raise LimitExceeded(
            f"the request's {len(plans)} images take {total:,} decoded pixels together, over this server's "
            f"limit of {limits.max_request_pixels:,} per request (max_request_pixels); send fewer or "
            "smaller images")
    return total


# ---------------------------------------------------------------------- decoding
def _load(img: Image.Image, field: str) -> None:
    try:
        img.load()
    except Exception as exc:  # truncated or corrupt data surfaces here, with many exception types
        raise InvalidInput(f"the image data is corrupt or truncated ({exc})", field=field) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white (per pixel, so it commutes with cropping)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(data: bytes, limits: ImageLimits, field: str = "image") -> Image.Image:
    """Decode untrusted bytes into an RGB PIL image at full size, enforcing ``limits`` before decoding.

    Jobs that know their working size use ``plan_working`` and ``decode_working`` instead.
    """
    img = _open(data, limits, field)
    _load(img, field)
    return to_rgb(img)


def decode_working(data: bytes, plan: WorkingPlan) -> Image.Image:
    """Decode ``data`` straight to ``plan.size`` RGB; the only full-size buffer is the decoder's."""
    field = plan.header.field
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"the image bytes could not be read as an image ({exc.__class__.__name__})",
                           field=field) from None
    if img.size != (plan.header.width, plan.header.height):
        raise InvalidInput("the image changed between its header check and its decoding", field=field)
    scale = 1.0
    if plan.draft > 1:
        drafted = img.draft(img.mode, (img.width // plan.draft, img.height // plan.draft))
        if drafted is not None:
            scale = plan.header.width / drafted[1][2]
    _load(img, field)
    out = resize_to(img, plan.geometry, plan.resample, scale)
    if out is not img:  # an RGB image already at its working size comes back as it is
        img.close()
    return out


def resize_to(img: Image.Image, geometry: Geometry, resample: int = Image.Resampling.BICUBIC,
              scale: float = 1.0) -> Image.Image:
    """``img`` (any mode, decoded at 1/``scale`` of ``geometry.source``) brought to ``geometry`` in RGB.

    A small image (source and resized size at most ``REDUCE_ABOVE`` pixels; the aspect-ratio limit
    bounds the latter) takes the plain path: convert, resize whole, crop. Anything bigger goes through
    ``resample_box``: only the kept region is resampled, after a reduction, in strips.
    """
    rw, rh = geometry.resized
    if scale == 1.0 and img.width * img.height <= REDUCE_ABOVE and rw * rh <= REDUCE_ABOVE:
        img = to_rgb(img)
        if (rw, rh) != img.size:
            img = img.resize((rw, rh), resample)
        return img.crop(geometry.crop) if geometry.crop else img
    box = tuple(v / scale for v in geometry.box)
    return resample_box(img, box, geometry.size, resample)


def resample_box(img: Image.Image, box, size: tuple[int, int], resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """The ``box`` region of ``img`` (any mode) resampled to ``size``, in RGB.

    Only the region the filter reads is converted; a big region is block-averaged first (keeping
    ``REDUCING_GAP`` source pixels per output pixel) and converted in strips, so the memory is that of
    the result plus a strip.
    """
    box = tuple(float(v) for v in box)
    sx, sy = (box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1]
    factor = max(1, int(min(sx, sy) / REDUCING_GAP))
    support = _FILTER_SUPPORT.get(resample, 3.0)
    mx, my = support * max(sx, 1.0) + 1, support * max(sy, 1.0) + 1  # the filter's reach, in source pixels
    region = (max(0, math.floor(box[0] - mx)), max(0, math.floor(box[1] - my)),
              min(img.width, math.ceil(box[2] + mx)), min(img.height, math.ceil(box[3] + my)))
    if factor == 1 and img.mode == "RGB":
        return _resample(img, box, size, resample)  # Pillow reads only the rows and columns it needs
    rgb = _rgb_region(img, region, factor)
    inner = tuple((v - region[i % 2]) / factor for i, v in enumerate(box))
    return _resample(rgb, inner, size, resample)


def _resample(img: Image.Image, box, size, resample) -> Image.Image:
    if tuple(size) == img.size and box == (0.0, 0.0, float(img.width), float(img.height)):
        return img
    if tuple(size) == (round(box[2] - box[0]), round(box[3] - box[1])) and all(float(v).is_integer() for v in box):
        return img.crop(tuple(int(v) for v in box))  # a pure crop: no filter at all
    return img.resize(tuple(size), resample, box=box)


def _rgb_region(img: Image.Image, region: tuple[int, int, int, int], factor: int) -> Image.Image:
    """``region`` of ``img`` in RGB, block-averaged ``factor`` times, converted strip by strip."""
    if img.mode == "RGB":
        return img.reduce(factor, box=region) if factor > 1 else img.crop(region)
    left, top, right, bottom = region
    width = right - left
    rows = max(factor, (STRIP_PIXELS // max(1, width)) // factor * factor)  # whole blocks per strip
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil((bottom - top) / factor)))
    for y in range(top, bottom, rows):
        strip = to_rgb(img.crop((left, y, right, min(y + rows, bottom))))
        if factor > 1:
            strip = strip.reduce(factor)
        out.paste(strip, (0, (y - top) // factor))
    return out


def encode_png(img: Image.Image, compress_level: int = 6) -> bytes:
    """PNG bytes; ``compress_level`` 1 is several times faster than zlib's default 6, a little larger."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
