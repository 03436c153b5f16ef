"""The generated shapes world: determinism, masks, labels and the caption grammar."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from pixelrpc.models.data import coco_layout, shapes
from pixelrpc.models.errors import InvalidInput

OBJ = r"(small|little|large|big) (red|green|blue|yellow|purple|cyan) (circle|square|triangle)"
REL = r"(to the left of|left of|to the right of|right of|above|over|below|under)"
REL_NAME = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right",
            "above": "above", "over": "above", "below": "below", "under": "below"}
# (regex, index of the subject's group triple, index of the reference's) for the pair templates
PAIR_PATTERNS = [
    (re.compile(rf"^a {OBJ} {REL} a {OBJ}$"), "subject_first"),
    (re.compile(rf"^there is a {OBJ} {REL} a {OBJ}$"), "subject_first"),
    (re.compile(rf"^a {OBJ} with a {OBJ} {REL} it$"), "reference_first"),
]
SINGLE_PATTERN = re.compile(rf"^(a|there is a|a picture of a|a single) {OBJ}( on a grey background)?$")
SIZE_OF_WORD = {"small": "small", "little": "small", "large": "large", "big": "large"}


@pytest.fixture(scope="module")
def scenes() -> list[shapes.Scene]:
    rng = np.random.default_rng(1234)
    return [shapes.generate_scene(rng, 64) for _ in range(300)]


def _matches(obj: shapes.ShapeObject, size_word: str, colour: str, shape: str) -> bool:
    return (obj.size, obj.colour, obj.shape) == (SIZE_OF_WORD[size_word], colour, shape)


def _relation_true(a: shapes.ShapeObject, b: shapes.ShapeObject, rel: str) -> bool:
    """Is "a is rel of b" true of the centres, with the dominant axis at least half the other?"""
    dx, dy = a.x - b.x, a.y - b.y
    horizontal = abs(dx) >= 0.5 * abs(dy)
    vertical = abs(dy) >= 0.5 * abs(dx)
    return {"left": horizontal and dx < 0, "right": horizontal and dx > 0,
            "above": vertical and dy < 0, "below": vertical and dy > 0}[rel]


def test_same_seed_same_scenes_and_different_seed_different():
    a = shapes.generate_batch(7, 20, 48)
    b = shapes.generate_batch(7, 20, 48)
    c = shapes.generate_batch(8, 20, 48)
    for name in ("images", "labels", "masks", "num_objects", "shapes", "colours", "sizes", "centres",
                 "bboxes", "rgbs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.captions != c.captions
    # The batch is the scene stream of one Generator seeded the same way.
    rng = np.random.default_rng(7)
    for i in range(3):
        scene = shapes.generate_scene(rng, 48)
        np.testing.assert_array_equal(scene.image, a.images[i])
        assert scene.captions == a.captions[i]


def test_images_have_the_requested_size_and_type():
    for size in (32, 64, 100):
        b = shapes.generate_batch(0, 3, size)
        assert b.images.shape == (3, size, size, 3) and b.images.dtype == np.uint8
        assert b.masks.shape == (3, shapes.MAX_OBJECTS, size, size) and b.masks.dtype == bool
    no_masks = shapes.generate_batch(0, 3, 32, with_masks=False)
    assert no_masks.masks.shape == (3, 0, 32, 32)
    np.testing.assert_array_equal(no_masks.images, shapes.generate_batch(0, 3, 32).images)


@pytest.mark.parametrize("size", [16, 31, 2000, 64.0])
def test_bad_sizes_are_refused_with_the_field(size):
    with pytest.raises(InvalidInput) as e:
        shapes.generate_scene(np.random.default_rng(0), size)
    assert e.value.violations[0].field == "size"
    assert "32" in e.value.message


def test_masks_are_exactly_the_painted_object_pixels(scenes):
    for scene in scenes:
        img = scene.image.astype(int)
        spread = img.max(axis=2) - img.min(axis=2)  # (H, W): grey background ~0, colours > 100
        union = np.zeros(img.shape[:2], dtype=bool)
        for obj in scene.objects:
            assert obj.mask.any()
            assert not (obj.mask & union).any(), "masks overlap"
            union |= obj.mask
            assert (img[obj.mask] == np.asarray(obj.rgb)).all(), "a mask pixel is not the object's colour"
            assert abs(np.asarray(obj.rgb, int) - shapes.COLOURS[obj.colour]).max() <= shapes.COLOUR_JITTER
        assert (spread[union] > 100).all()
        assert (spread[~union] < 30).all(), "a painted pixel lies outside every mask"


def test_masks_have_the_named_shape_position_and_area(scenes):
    fill = {"circle": [], "square": [], "triangle": []}
    for scene in scenes:
        for obj in scene.objects:
            ys, xs = np.nonzero(obj.mask)
            x0, y0, x1, y1 = obj.bbox
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert abs((x0 + x1) / 2 - obj.x) <= 1.0 and abs((y0 + y1) / 2 - obj.y) <= 1.0
            assert obj.mask.sum() == obj.area  # no occlusion: objects keep a gap between them
            assert 0.75 < obj.area / obj.scale**2 < 1.25
            fill[obj.shape].append(obj.area / ((x1 - x0) * (y1 - y0)))
    assert 0.70 < np.mean(fill["circle"]) < 0.85  # pi / 4
    assert np.mean(fill["square"]) > 0.97
    assert 0.45 < np.mean(fill["triangle"]) < 0.62  # one half, plus the rasterised edges
    large = [o.scale for s in scenes for o in s.objects if o.size == "large"]
    small = [o.scale for s in scenes for o in s.objects if o.size == "small"]
    assert min(large) > max(small)


def test_label_is_the_largest_object_drawn_last(scenes):
    assert len(shapes.CLASS_NAMES) == len(set(shapes.CLASS_NAMES)) == 18
    for scene in scenes:
        areas = [o.area for o in scene.objects]
        assert areas == sorted(areas), "objects are drawn in order of increasing area"
        last = scene.objects[-1]
        assert last.area == max(areas) and last.mask.sum() == last.area
        assert scene.label_name == f"{last.colour} {last.shape}"
        assert shapes.CLASS_NAMES[scene.label] == scene.label_name
        if len(areas) > 1:
            assert last.area >= shapes.PIXEL_MARGIN * sorted(areas)[-2]


def test_scene_statistics_cover_the_world(scenes):
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3}
    assert counts[2] + counts[3] >= 0.5 * len(scenes)
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(shapes.SHAPES)
    assert {o.colour for o in objs} == set(shapes.COLOUR_NAMES)
    assert {o.size for o in objs} == set(shapes.SIZES)
    assert len({s.label for s in scenes}) == 18


def test_captions_are_true_of_the_scene(scenes):
    relations, templates = Counter(), Counter()
    for scene in scenes:
        assert 3 <= len(scene.captions) <= 5
        assert len(set(scene.captions)) == len(scene.captions)
        for caption in scene.captions:
            if len(scene.objects) == 1:
                m = SINGLE_PATTERN.match(caption)
                assert m, caption
                assert _matches(scene.objects[0], *m.groups()[1:4]), caption
                templates[("single", m.group(1), m.group(5))] += 1
                continue
            hits = [(k, order, m) for k, (pattern, order) in enumerate(PAIR_PATTERNS)
                    if (m := pattern.match(caption))]
            assert len(hits) == 1, f"caption outside the grammar: {caption!r}"
            k, order, m = hits[0]
            g = m.groups()
            if order == "subject_first":
                subj, rel, ref = g[0:3], g[3], g[4:7]
            else:
                ref, subj, rel = g[0:3], g[3:6], g[6]
            templates[("pair", k)] += 1
            relations[REL_NAME[rel]] += 1
            assert any(_relation_true(a, b, REL_NAME[rel])
                       for a in scene.objects if _matches(a, *subj)
                       for b in scene.objects if b is not a and _matches(b, *ref)), caption
    assert set(relations) == {"left", "right", "above", "below"}
    assert sum(1 for t in templates if t[0] == "pair") >= 3
    assert sum(1 for t in templates if t[0] == "single") >= 3


def test_every_caption_tokenises_within_the_vocabulary(scenes):
    vocab = shapes.VOCAB
    idx_to_word, word_to_idx = vocab["idx_to_word"], vocab["word_to_idx"]
    assert idx_to_word[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert all(word_to_idx[w] == i for i, w in enumerate(idx_to_word))
    unk = word_to_idx["<UNK>"]
    for scene in scenes:
        for caption in scene.captions:
            assert all(w in word_to_idx for w in caption.split()), caption
            row = coco_layout.encode_caption(caption, word_to_idx)
            assert row.shape == (17,) and row.dtype == np.int32
            assert unk not in row
            assert coco_layout.decode_captions(row, idx_to_word) == caption
    assert shapes.build_vocab() == vocab and shapes.build_vocab() is not vocab


def test_encode_caption_refuses_rows_that_do_not_fit_and_marks_unknown_words():
    w2i = shapes.VOCAB["word_to_idx"]
    row = coco_layout.encode_caption("a zebra circle", w2i)
    assert list(row[:5]) == [w2i["<START>"], w2i["a"], w2i["<UNK>"], w2i["circle"], w2i["<END>"]]
    assert (row[5:] == w2i["<NULL>"]).all()
    with pytest.raises(InvalidInput, match="16 words"):
        coco_layout.encode_caption(" ".join(["a"] * 16), w2i)
