"""The shapes dataset on disk, in the CS231n COCO captioning layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from pixelrpc.models.data import coco_layout, shapes
from pixelrpc.models.errors import FailedPrecondition, InvalidInput

N_TRAIN, N_VAL, SEED, SIZE = 10, 4, 5, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> shapes.ShapesDataset:
    return shapes.write_coco_layout(tmp_path_factory.mktemp("world") / "shapes", N_TRAIN, N_VAL, SEED, SIZE)


def _expected(split: str) -> shapes.ShapesBatch:
    return shapes.generate_batch(shapes.split_seeds(SEED)[split], {"train": N_TRAIN, "val": N_VAL}[split], SIZE)


def test_folder_has_exactly_the_layout(dataset):
    names = sorted(p.name for p in dataset.root.iterdir())
    assert names == sorted(["coco2014_captions.h5", "coco2014_vocab.json", "train2014", "val2014",
                            "train2014_urls.txt", "val2014_urls.txt", "train2014_masks.npz",
                            "val2014_masks.npz", "shapes.json"])
    assert not list(dataset.root.parent.glob(".shapes.tmp-*"))
    info = json.loads((dataset.root / "shapes.json").read_text())
    assert (info["seed"], info["size"], info["n_train"], info["n_val"]) == (SEED, SIZE, N_TRAIN, N_VAL)
    vocab = json.loads((dataset.root / "coco2014_vocab.json").read_text())
    assert vocab == shapes.VOCAB and dataset.vocab_size == len(vocab["idx_to_word"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_caption_tables_hold_every_reference_of_every_image(dataset, split):
    batch = _expected(split)
    idx_to_word = shapes.VOCAB["idx_to_word"]
    with h5py.File(dataset.root / "coco2014_captions.h5", "r") as f:
        assert set(f.keys()) == {"train_captions", "train_image_idxs", "val_captions", "val_image_idxs"}
        captions, idxs = f[f"{split}_captions"][()], f[f"{split}_image_idxs"][()]
    assert captions.dtype == np.int32 and idxs.dtype == np.int32
    assert captions.ndim == 2 and captions.shape[1] == 17 and idxs.shape == (captions.shape[0],)
    assert captions.shape[0] == {"train": dataset.n_train_captions, "val": dataset.n_val_captions}[split]
    assert (captions[:, 0] == 1).all()  # <START>
    for row in captions:
        end = int(np.flatnonzero(row == 2)[0])  # <END>
        assert (row[end + 1:] == 0).all() and (row[1:end] > 3).all()  # words only, then <NULL>
    for image_idx in range(len(batch)):
        decoded = [coco_layout.decode_captions(r, idx_to_word) for r in captions[idxs == image_idx]]
        assert decoded == list(batch.captions[image_idx])


@pytest.mark.parametrize("split", ["train", "val"])
def test_images_masks_and_urls_line_up_with_image_indices(dataset, split):
    batch = _expected(split)
    folder = dataset.root / coco_layout.SPLIT_DIRS[split]
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"{i:06d}.png" for i in range(len(batch))]
    for i, name in enumerate(files):
        np.testing.assert_array_equal(np.asarray(Image.open(folder / name).convert("RGB")), batch.images[i])
    urls = (dataset.root / coco_layout.url_file(split)).read_text().splitlines()
    assert urls == [f"{coco_layout.SPLIT_DIRS[split]}/{name}" for name in files]
    with np.load(dataset.root / shapes.masks_filename(split), allow_pickle=False) as z:
        assert z["masks"].shape == (len(batch), shapes.MAX_OBJECTS, SIZE, SIZE) and z["masks"].dtype == bool
        for name in ("masks", "labels", "num_objects", "shapes", "colours", "sizes", "bboxes", "rgbs"):
            np.testing.assert_array_equal(z[name], getattr(batch, name), err_msg=name)
        assert list(z["class_names"]) == list(shapes.CLASS_NAMES)
        # The masks are the drawn pixels of the written images.
        for i in range(len(batch)):
            for j in range(int(z["num_objects"][i])):
                assert (batch.images[i][z["masks"][i, j]] == z["rgbs"][i, j]).all()
            assert not z["masks"][i, int(z["num_objects"][i]):].any()


def test_val_split_does_not_depend_on_the_train_size(tmp_path):
    a = shapes.write_coco_layout(tmp_path / "a", 2, 3, seed=9, size=32)
    b = shapes.write_coco_layout(tmp_path / "b", 5, 3, seed=9, size=32)
    for i in range(3):
        name = f"val2014/{i:06d}.png"
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()


def test_refuses_a_used_folder_and_leaves_nothing_half_written(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not an empty folder"):
        shapes.write_coco_layout(used, 2, 1, size=32)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]

    def fail_midway(written: int) -> None:
        if written == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shapes.write_coco_layout(tmp_path / "interrupted", 5, 2, size=32, progress=fail_midway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]

    with pytest.raises(InvalidInput):
        shapes.write_coco_layout(tmp_path / "empty", 0, 1, size=32)
    (tmp_path / "empty_ok").mkdir()  # an existing empty folder is fine
    assert shapes.write_coco_layout(tmp_path / "empty_ok", 1, 0, size=32).n_val_captions == 0


def _block_means(path) -> np.ndarray:
    """A stand-in image feature: per-channel means of 4 x 4 blocks, (48,) for 32 px images."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    h, w, _ = img.shape
    return img.reshape(4, h // 4, 4, w // 4, 3).mean(axis=(1, 3)).reshape(-1)  # (48,)


def test_written_files_load_with_the_captioning_data_loader(dataset):
    from pixelrpc.models.captioning import data as captioning_data

    # What `pixelrpc features extract` does afterwards: one row per image, in file-name order.
    for split in ("train", "val"):
        folder = dataset.root / coco_layout.SPLIT_DIRS[split]
        files = sorted(folder.iterdir())
        captioning_data.write_features(dataset.root / captioning_data.default_feature_file(split),
                                       np.stack([_block_means(p) for p in files]),
                                       names=[p.name for p in files])
    with captioning_data.CocoCaptioningData.open(dataset.root) as data:
        assert data.idx_to_word == shapes.VOCAB["idx_to_word"]
        assert data.word_to_idx == shapes.VOCAB["word_to_idx"]
        assert data.feature_dim == 48
        for split in ("train", "val"):
            batch = _expected(split)
            part = data.split(split)
            assert part.num_captions == sum(len(c) for c in batch.captions)
            image_ids = part.image_ids()
            assert list(image_ids) == list(range(len(batch)))  # every image has captions
            for image, refs in zip(image_ids, part.references(image_ids), strict=True):
                assert [coco_layout.decode_captions(r, data.idx_to_word) for r in refs] == list(batch.captions[image])
            captions, features, image_idxs = part.batch(np.arange(part.num_captions))
            assert captions.shape == (part.num_captions, 17)
            for row, idx in zip(features, image_idxs, strict=True):
                rel = coco_layout.image_relpath(split, int(idx))
                np.testing.assert_allclose(row, _block_means(dataset.root / rel), rtol=1e-6)
            assert data.urls(split) == [coco_layout.image_relpath(split, i) for i in range(len(batch))]
