"""A generated world of coloured shapes, in the spirit of CLEVR (Johnson et al., "CLEVR: A Diagnostic
Dataset for Compositional Language and Elementary Visual Reasoning", CVPR 2017), small enough to train
and test every model of the suite on a laptop.

A scene is an RGB image with one to three flat-coloured objects on a lightly textured grey background.
Each object has a shape (circle, square, triangle), a colour (six), a size (small, large) and a position.
A scene comes with

- per-object masks: the pixels where that object is visible;
- a classification label: shape and colour of the largest object by area (``CLASS_NAMES``, 3 x 6 = 18).
  Objects are drawn in order of increasing area, so the labelled object is drawn last and never
  occluded; equal areas go to the object drawn last;
- three to five captions from a small grammar (several paraphrase templates, size synonyms and four
  spatial relations: left of, right of, above, below), so BLEU has several references per image:
  "a large red circle to the left of a small blue square", "a small blue square right of a big red circle".

The vocabulary is built from the grammar itself (``VOCAB``), so every caption the generator can produce
tokenises without ``<UNK>``. ``write_coco_layout`` writes a dataset in the CS231n COCO captioning layout
(see ``pixelrpc.models.data.coco_layout``) plus PNG images and per-split mask files; the training API
(``generate_scene``, ``generate_batch``) draws fresh scenes in memory.

Everything is seeded: the same seed gives the same scenes, bit for bit.

Dimensions: N scenes, K = MAX_OBJECTS object slots, H = W = size pixels, L caption length.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pixelrpc.models.data import coco_layout
from pixelrpc.models.errors import FailedPrecondition, InvalidInput

GENERATOR_VERSION = 1  # bump when the same seed would draw different scenes

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> base RGB; each object's colour is jittered around it by up to COLOUR_JITTER
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (230, 200, 30),
    "purple": (135, 55, 185),
    "cyan": (40, 195, 205),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOUR_NAMES)

MAX_OBJECTS = 3
OBJECT_COUNT_PROBS = (0.25, 0.40, 0.35)  # P(1), P(2), P(3) objects: 75% of scenes have two or three
# Side of a square of the object's area, as a fraction of the image side, per size.
SCALE_RANGES = {"small": (0.13, 0.17), "large": (0.22, 0.27)}
LABEL_MARGIN = 1.25  # the largest object's nominal area beats every other's by at least this factor
PIXEL_MARGIN = 1.10  # ... and its drawn pixel count every other's by this one (else the layout is redrawn)
COLOUR_JITTER = 12
GAP = 2.0  # pixels kept free between the bounding boxes of two objects
MIN_SIZE, MAX_SIZE = 32, 1024

_PLACEMENT_TRIES = 60
_SCENE_TRIES = 20

# ---------------------------------------------------------------------------------------------------
# The caption grammar. Every word any caption can contain appears in these tables.

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATIONS = ("left", "right", "above", "below")
RELATION_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
PAIR_TEMPLATES = (  # {a} is the subject, {b} the reference object, {rel} a phrase of relation(a, b)
    "a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
    "a {b} with a {a} {rel} it",
)
SINGLE_TEMPLATES = (
    "a {a}",
    "there is a {a}",
    "a picture of a {a}",
    "a single {a}",
    "a {a} on a grey background",
)
MIN_CAPTIONS, MAX_CAPTIONS = 3, 5


def _grammar_words() -> set[str]:
    words: set[str] = set(SHAPES) | set(COLOUR_NAMES)
    for synonyms in SIZE_WORDS.values():
        words.update(synonyms)
    for phrases in RELATION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    for template in PAIR_TEMPLATES + SINGLE_TEMPLATES:
        words.update(w for w in template.split() if not w.startswith("{"))
    return words


def build_vocab() -> dict:
    """The vocabulary of the grammar, ``{"idx_to_word": [...], "word_to_idx": {...}}`` (a fresh copy).

    ``<NULL>``, ``<START>``, ``<END>``, ``<UNK>`` are indices 0..3 as in the CS231n vocabulary; the
    grammar's words follow in sorted order.
    """
    return coco_layout.vocab_from_words(_grammar_words())


VOCAB = build_vocab()  # read-only; call build_vocab() for a copy you may change


def class_index(shape: str, colour: str) -> int:
    """Index into ``CLASS_NAMES`` of a shape and colour (shape-major: 6 colours per shape)."""
    return SHAPES.index(shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


# ---------------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True, eq=False)
class ShapeObject:
    """One drawn object.

    - shape, colour, size: names from SHAPES, COLOUR_NAMES, SIZES.
    - x, y: centre of its bounding box in pixels (x to the right, y down; pixel (i, j) covers
      [j, j+1) x [i, i+1)).
    - scale: side in pixels of a square of the object's nominal area.
    - rgb: its flat colour, uint8 (3,).
    - mask: bool (H, W), the pixels where it is visible (exactly the pixels painted rgb).
    - bbox: (x0, y0, x1, y1) of the visible mask, ints, ends exclusive.
    - area: number of pixels of its full shape (equal to mask.sum() unless occluded).
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float
    scale: float
    rgb: tuple[int, int, int]
    mask: np.ndarray = field(repr=False)
    bbox: tuple[int, int, int, int]
    area: int

    @property
    def class_index(self) -> int:
        return class_index(self.shape, self.colour)


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated scene.

    - image: uint8 (H, W, 3).
    - objects: the objects in drawing order; the last one is the labelled (largest) object.
    - label: index into CLASS_NAMES of the largest object's shape and colour.
    - captions: 3 to 5 distinct captions.
    """

    image: np.ndarray = field(repr=False)
    objects: tuple[ShapeObject, ...]
    label: int
    captions: tuple[str, ...]

    @property
    def label_name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def masks(self) -> np.ndarray:
        """bool (len(objects), H, W), in drawing order."""
        return np.stack([o.mask for o in self.objects])


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (1, W) x-coordinates and (H, 1) y-coordinates of pixel centres."""
    c = np.arange(size, dtype=np.float32) + 0.5
    xs, ys = c[None, :], c[:, None]  # (1, W), (H, 1)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


@functools.lru_cache(maxsize=8)
def _upsample_matrix(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) linear interpolation weights from a coarse grid to pixel centres."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    lo = np.minimum(np.floor(pos).astype(int), coarse - 2)
    frac = pos - lo
    m = np.zeros((size, coarse), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    m.flags.writeable = False
    return m


def _half_extent(shape: str, scale: float) -> tuple[float, float]:
    """Half width and half height of a shape's bounding box for a nominal area of scale**2."""
    if shape == "circle":
        r = scale / math.sqrt(math.pi)
        return r, r
    if shape == "square":
        return scale / 2, scale / 2
    side = scale * math.sqrt(4 / math.sqrt(3))  # equilateral triangle of area scale**2
    return side / 2, side * math.sqrt(3) / 4


def _shape_mask(shape: str, x: float, y: float, scale: float, size: int) -> np.ndarray:
    """bool (H, W): pixels whose centre lies inside the shape centred on (x, y)."""
    xs, ys = _pixel_centres(size)
    dx, dy = xs - x, ys - y  # (1, W), (H, 1)
    if shape == "circle":
        r = scale / math.sqrt(math.pi)
        return dx * dx + dy * dy <= r * r  # (H, W)
    hx, hy = _half_extent(shape, scale)
    if shape == "square":
        return (np.abs(dx) <= hx) & (np.abs(dy) <= hy)  # (H, W)
    # Triangle with its apex up: inside when below the apex lines and above the base.
    return (np.abs(dx) * (2 * hy) <= (dy + hy) * hx) & (dy <= hy)  # (H, W)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 (H, W, 3) light grey with smooth blotches and fine grain."""
    grey = rng.uniform(170.0, 215.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    coarse = rng.uniform(-14.0, 14.0, size=(5, 5)).astype(np.float32)
    m = _upsample_matrix(size, 5)
    blotches = m @ coarse @ m.T  # (H, W)
    grain = rng.integers(-4, 5, size=(size, size, 1), dtype=np.int16)
    img = (grey + tint)[None, None, :] + blotches[:, :, None] + grain  # (H, W, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_sizes(rng: np.random.Generator, n: int, img_size: int) -> tuple[list[str], list[float]]:
    """Size names and scales (pixels) of n objects whose largest area beats every other by LABEL_MARGIN.

    Scales are uniform in their size's SCALE_RANGES. When several objects share the largest size
    present, one of them is drawn from the top of the range and the others below it by the margin.
    """
    sizes = [SIZES[i] for i in rng.integers(0, len(SIZES), size=n)]
    fractions = [rng.uniform(*SCALE_RANGES[s]) for s in sizes]
    top_size = "large" if "large" in sizes else "small"
    peers = [i for i, s in enumerate(sizes) if s == top_size]
    if len(peers) > 1:
        lo, hi = SCALE_RANGES[top_size]
        margin = math.sqrt(LABEL_MARGIN)
        top = peers[int(rng.integers(len(peers)))]
        fractions[top] = rng.uniform(lo * margin, hi)
        for i in peers:
            if i != top:
                fractions[i] = rng.uniform(lo, fractions[top] / margin)
    return sizes, [f * img_size for f in fractions]


def _place(rng: np.random.Generator, extents: list[tuple[float, float]], size: int
           ) -> list[tuple[float, float]] | None:
    """Centres for boxes of the given half extents, GAP apart and inside the image; None if stuck."""
    boxes: list[tuple[float, float, float, float]] = []
    centres = []
    for hx, hy in extents:
        for _ in range(_PLACEMENT_TRIES):
            x = rng.uniform(hx + 1, size - 1 - hx)
            y = rng.uniform(hy + 1, size - 1 - hy)
            box = (x - hx, y - hy, x + hx, y + hy)
            if all(box[2] + GAP <= b[0] or b[2] + GAP <= box[0] or box[3] + GAP <= b[1] or b[3] + GAP <= box[1]
                   for b in boxes):
                boxes.append(box)
                centres.append((x, y))
                break
        else:
            return None
    return centres


def _relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Relations r such that "a is r of b" reads true: the dominant axis, and the other one too when
    it is at least half as large."""
    dx, dy = a.x - b.x, a.y - b.y
    rels = []
    if abs(dx) >= 0.5 * abs(dy):
        rels.append("left" if dx < 0 else "right")
    if abs(dy) >= 0.5 * abs(dx):
        rels.append("above" if dy < 0 else "below")
    return rels


def _describe(rng: np.random.Generator, o: ShapeObject) -> str:
    synonyms = SIZE_WORDS[o.size]
    return f"{synonyms[rng.integers(len(synonyms))]} {o.colour} {o.shape}"


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _captions(rng: np.random.Generator, objects: tuple[ShapeObject, ...]) -> tuple[str, ...]:
    """3 to 5 distinct captions of the scene drawn from the grammar."""
    want = int(rng.integers(MIN_CAPTIONS, MAX_CAPTIONS + 1))
    found: list[str] = []
    for _ in range(50 * want):
        if len(objects) == 1:
            text = _pick(rng, SINGLE_TEMPLATES).format(a=_describe(rng, objects[0]))
        else:
            i, j = rng.choice(len(objects), size=2, replace=False)
            a, b = objects[i], objects[j]
            rel = _pick(rng, _relations(a, b))
            text = _pick(rng, PAIR_TEMPLATES).format(
                a=_describe(rng, a), b=_describe(rng, b), rel=_pick(rng, RELATION_PHRASES[rel]))
        if text not in found:
            found.append(text)
            if len(found) == want:
                break
    return tuple(found)


def _check_size(size: int) -> int:
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidInput(f"image size must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, got {size!r}",
                           field="size")
    return int(size)


def generate_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw one scene.

    Inputs:
    - rng: the numpy Generator all randomness comes from (the same state gives the same scene).
    - size: H = W, the image side in pixels (32 to 1024).

    Returns a Scene with image uint8 (H, W, 3), its objects in drawing order (with bool (H, W) masks),
    the label and 3 to 5 captions.
    """
    size = _check_size(size)
    n = int(rng.choice(MAX_OBJECTS, p=OBJECT_COUNT_PROBS)) + 1
    layout = None
    for tries in range(_SCENE_TRIES * MAX_OBJECTS):
        if tries and tries % _SCENE_TRIES == 0:
            n = max(1, n - 1)  # three large objects did not fit after many tries: drop one
        shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=n)]
        colours = [COLOUR_NAMES[i] for i in rng.integers(0, len(COLOUR_NAMES), size=n)]
        sizes, scales = _draw_sizes(rng, n, size)
        centres = _place(rng, [_half_extent(s, k) for s, k in zip(shapes, scales, strict=True)], size)
        if centres is None:
            continue
        full = [_shape_mask(s, x, y, k, size) for s, (x, y), k in zip(shapes, centres, scales, strict=True)]
        areas = [int(m.sum()) for m in full]
        layout = (shapes, colours, sizes, scales, centres, full, areas)
        ranked = sorted(areas)
        if n == 1 or ranked[-1] >= PIXEL_MARGIN * ranked[-2]:
            break  # else pixel snapping ate the nominal margin (rare, small squares): draw again
    if layout is None:  # unreachable for MIN_SIZE and the scale ranges above: one object always fits
        raise AssertionError("could not place a single object")
    shapes, colours, sizes, scales, centres, full, areas = layout
    n = len(shapes)
    order = sorted(range(n), key=lambda i: areas[i])  # stable: equal areas keep their order

    image = _background(rng, size)
    rgbs = []
    for i in order:
        base = np.asarray(COLOURS[colours[i]], dtype=np.int16)
        rgb = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255).astype(np.uint8)
        image[full[i]] = rgb
        rgbs.append(rgb)

    objects = []
    covered = np.zeros((size, size), dtype=bool)
    for rank in reversed(range(n)):  # visible = full shape minus what later objects cover
        i = order[rank]
        visible = full[i] & ~covered
        covered |= full[i]
        rows, cols = np.any(visible, axis=1), np.any(visible, axis=0)
        y0, y1 = int(np.argmax(rows)), size - int(np.argmax(rows[::-1]))
        x0, x1 = int(np.argmax(cols)), size - int(np.argmax(cols[::-1]))
        objects.append(ShapeObject(
            shape=shapes[i], colour=colours[i], size=sizes[i], x=float(centres[i][0]), y=float(centres[i][1]),
            scale=float(scales[i]), rgb=tuple(int(c) for c in rgbs[rank]), mask=visible,
            bbox=(x0, y0, x1, y1), area=areas[i]))
    objects_t = tuple(reversed(objects))
    return Scene(image=image, objects=objects_t, label=objects_t[-1].class_index,
                 captions=_captions(rng, objects_t))


# ---------------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True, eq=False)
class ShapesBatch:
    """N scenes as arrays; object slots beyond a scene's count are padded (masks False, indices -1).

    - images: uint8 (N, H, W, 3).
    - labels: int64 (N,), indices into CLASS_NAMES.
    - masks: bool (N, K, H, W), visible pixels per object, in drawing order (labelled object last).
    - num_objects: int8 (N,).
    - shapes, colours, sizes: int8 (N, K), indices into SHAPES, COLOUR_NAMES, SIZES.
    - centres: float32 (N, K, 2), (x, y) in pixels. bboxes: int16 (N, K, 4), (x0, y0, x1, y1).
    - rgbs: uint8 (N, K, 3).
    - captions: N tuples of 3 to 5 strings.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    num_objects: np.ndarray
    shapes: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray
    centres: np.ndarray
    bboxes: np.ndarray
    rgbs: np.ndarray
    captions: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def mask_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a ``*_masks.npz`` file (plain dtypes: loads with allow_pickle=False)."""
        return {
            "masks": self.masks, "labels": self.labels, "num_objects": self.num_objects,
            "shapes": self.shapes, "colours": self.colours, "sizes": self.sizes,
            "centres": self.centres, "bboxes": self.bboxes, "rgbs": self.rgbs,
            "class_names": np.asarray(CLASS_NAMES), "shape_names": np.asarray(SHAPES),
            "colour_names": np.asarray(COLOUR_NAMES), "size_names": np.asarray(SIZES),
        }


def iter_scenes(seed: int | np.random.SeedSequence, n: int, size: int = 64):
    """Yield n scenes drawn from one Generator seeded with ``seed``."""
    if n < 0:
        raise InvalidInput(f"number of scenes must be >= 0, got {n}", field="n")
    size = _check_size(size)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield generate_scene(rng, size)


def generate_batch(seed: int | np.random.SeedSequence, n: int, size: int = 64, *,
                   with_masks: bool = True) -> ShapesBatch:
    """Draw n scenes as arrays (see ShapesBatch); the same seed gives the same batch.

    For training a classifier on fresh scenes each epoch, pass a different seed per epoch (e.g.
    ``(base_seed, epoch)`` through ``np.random.SeedSequence``). ``with_masks=False`` leaves ``masks``
    with K = 0 to save memory (N * K * H * W bytes).
    """
    size = _check_size(size)
    k = MAX_OBJECTS if with_masks else 0
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    masks = np.zeros((n, k, size, size), dtype=bool)
    num_objects = np.empty(n, dtype=np.int8)
    shapes = np.full((n, MAX_OBJECTS), -1, dtype=np.int8)
    colours = np.full((n, MAX_OBJECTS), -1, dtype=np.int8)
    sizes = np.full((n, MAX_OBJECTS), -1, dtype=np.int8)
    centres = np.full((n, MAX_OBJECTS, 2), np.nan, dtype=np.float32)
    bboxes = np.full((n, MAX_OBJECTS, 4), -1, dtype=np.int16)
    rgbs = np.zeros((n, MAX_OBJECTS, 3), dtype=np.uint8)
    captions = []
    for i, scene in enumerate(iter_scenes(seed, n, size)):
        images[i] = scene.image
        labels[i] = scene.label
        num_objects[i] = len(scene.objects)
        for j, o in enumerate(scene.objects):
            if with_masks:
                masks[i, j] = o.mask
            shapes[i, j] = SHAPES.index(o.shape)
            colours[i, j] = COLOUR_NAMES.index(o.colour)
            sizes[i, j] = SIZES.index(o.size)
            centres[i, j] = (o.x, o.y)
            bboxes[i, j] = o.bbox
            rgbs[i, j] = o.rgb
        captions.append(scene.captions)
    return ShapesBatch(images, labels, masks, num_objects, shapes, colours, sizes, centres, bboxes, rgbs,
                       tuple(captions))


# ---------------------------------------------------------------------------------------------------
# The dataset on disk


@dataclass(frozen=True)
class ShapesDataset:
    """What ``write_coco_layout`` wrote."""

    root: Path
    n_train: int
    n_val: int
    n_train_captions: int
    n_val_captions: int
    vocab_size: int
    size: int
    seed: int


def split_seeds(seed: int) -> dict[str, np.random.SeedSequence]:
    """Independent seed streams per split: the val scenes do not depend on n_train."""
    train, val = np.random.SeedSequence(seed).spawn(2)
    return {"train": train, "val": val}


def masks_filename(split: str) -> str:
    """``train2014_masks.npz`` / ``val2014_masks.npz``."""
    return f"{coco_layout.SPLIT_DIRS[split]}_masks.npz"


def write_coco_layout(out_dir: str | Path, n_train: int, n_val: int, seed: int = 0, size: int = 64, *,
                      progress: Callable[[int], None] | None = None) -> ShapesDataset:
    """Write a shapes dataset in the CS231n COCO captioning layout.

    Writes into ``out_dir`` (which must not exist, or be empty):
    ``coco2014_captions.h5``, ``coco2014_vocab.json``, ``train2014/%06d.png`` and ``val2014/%06d.png``
    (image index = file-name order), ``train2014_urls.txt``/``val2014_urls.txt`` (relative paths),
    ``train2014_masks.npz``/``val2014_masks.npz`` (the ShapesBatch arrays: ``masks`` (N, K, H, W) bool,
    per-object attributes, ``labels`` (N,), ``class_names``) and ``shapes.json`` (how it was made).
    The folder appears complete or not at all: it is written beside ``out_dir`` and renamed at the end.
    Mask files hold the whole split in memory while writing (K * H * W bytes per image: 12 KiB at 64 px).

    Inputs:
    - n_train, n_val: numbers of images (n_train >= 1, n_val >= 0).
    - seed: the train and val scenes are drawn from independent streams of this seed.
    - size: H = W of the images.
    - progress: called with the number of images written after each image.

    Features are not written: run ``pixelrpc features extract`` on ``train2014/`` and ``val2014/``.
    """
    size = _check_size(size)
    if n_train < 1 or n_val < 0:
        raise InvalidInput(f"need n_train >= 1 and n_val >= 0, got {n_train} and {n_val}", field="n_train")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FailedPrecondition(f"{out} already exists and is not an empty folder; remove it or choose "
                                 f"another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        vocab = build_vocab()
        tables, written = {}, 0
        for split, n in (("train", n_train), ("val", n_val)):
            batch = generate_batch(split_seeds(seed)[split], n, size)
            (tmp / coco_layout.SPLIT_DIRS[split]).mkdir()
            relpaths = []
            for i in range(n):
                relpath = coco_layout.image_relpath(split, i)
                Image.fromarray(batch.images[i]).save(tmp / relpath, optimize=False)
                relpaths.append(relpath)
                written += 1
                if progress is not None:
                    progress(written)
            coco_layout.write_urls(tmp / coco_layout.url_file(split), relpaths)
            np.savez_compressed(tmp / masks_filename(split), **batch.mask_arrays())
            tables[split] = coco_layout.encode_captions(batch.captions, vocab["word_to_idx"])
        coco_layout.write_captions(tmp / coco_layout.CAPTIONS_FILE, tables)
        coco_layout.write_vocab(tmp / coco_layout.VOCAB_FILE, vocab["idx_to_word"])
        info = {"generator": __name__, "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
                "n_train": n_train, "n_val": n_val, "class_names": list(CLASS_NAMES)}
        (tmp / "shapes.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        coco_layout.publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShapesDataset(root=out, n_train=n_train, n_val=n_val, n_train_captions=len(tables["train"][0]),
                         n_val_captions=len(tables["val"][0]), vocab_size=len(vocab["idx_to_word"]),
                         size=size, seed=seed)
