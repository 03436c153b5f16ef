"""The CS231n COCO captioning data layout: reading minibatches from h5, and writing the layout.

A data folder holds:

- ``coco2014_captions.h5``: ``train_captions`` (Ncap, T + 1) int32 word indices, each row
  ``<START> w1 ... wk <END> <NULL> ...``; ``train_image_idxs`` (Ncap,) int32, the image of each
  caption; ``val_captions`` and ``val_image_idxs`` likewise.
- ``coco2014_vocab.json``: ``{"idx_to_word": [...], "word_to_idx": {...}}``.
- Feature files ``train2014_vgg16_fc7.h5`` / ``val2014_vgg16_fc7.h5`` (or ``*_pca.h5``) with a
  dataset ``features`` (Nimg, D), row i being image i. Files written by ``pixelrpc features
  extract`` also hold ``names`` (Nimg,) and the encoder's name, version and sha256 as attributes.
- Optional ``train2014_urls.txt`` / ``val2014_urls.txt``: one image location per line.

Feature files may be larger than memory: features are read per minibatch, with sorted unique
indices (what h5py's fancy indexing requires). Captions are small and read whole.

Dimension letters: N minibatch size, T + 1 caption length, D feature dimension.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelrpc.models.errors import FailedPrecondition, InvalidInput

CAPTIONS_FILE = "coco2014_captions.h5"
VOCAB_FILE = "coco2014_vocab.json"
SPLITS = ("train", "val")


def default_feature_file(split: str, pca: bool = False) -> str:
    """The CS231n feature file name of a split: ``train2014_vgg16_fc7.h5`` or ``..._pca.h5``."""
    return f"{split}2014_vgg16_fc7{'_pca' if pca else ''}.h5"


def url_file(split: str) -> str:
    return f"{split}2014_urls.txt"


# --------------------------------------------------------------------------- vocabulary


def load_vocab(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """``(idx_to_word, word_to_idx)`` of a ``coco2014_vocab.json``; checks that both agree."""
    try:
        obj = json.loads(Path(path).read_text())
        idx_to_word = [str(w) for w in obj["idx_to_word"]]
        word_to_idx = {str(w): int(i) for w, i in obj["word_to_idx"].items()}
    except FileNotFoundError:
        raise FailedPrecondition(f"vocabulary file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a CS231n vocabulary json: {exc!r}") from exc
    if len(word_to_idx) != len(idx_to_word) or any(word_to_idx.get(w) != i for i, w in enumerate(idx_to_word)):
        raise InvalidInput(f"{path}: idx_to_word and word_to_idx disagree")
    return idx_to_word, word_to_idx


def decode_captions(captions: np.ndarray, idx_to_word: Sequence[str]) -> list[str] | str:
    """Words of caption rows up to ``<END>``, without ``<START>``/``<NULL>`` (the assignment helper).

    Inputs:
    - captions: (N, T) or (T,) word indices

    Returns N strings, or one string for a single row.
    """
    arr = np.asarray(captions)
    rows = arr[None] if arr.ndim == 1 else arr
    out = []
    for row in rows:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word == "<END>":
                break
            if word not in ("<NULL>", "<START>"):
                words.append(word)
        out.append(" ".join(words))
    return out[0] if arr.ndim == 1 else out


# --------------------------------------------------------------------------- reading


class FeatureFile:
    """An open h5 feature file, read by row index without loading it whole."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FailedPrecondition(
                f"feature file {self.path} does not exist; compute it with "
                "'pixelrpc features extract --encoder NAME --images DIR --out FILE.h5'")
        try:
            self._file = h5py.File(self.path, "r")
            self.dataset = self._file["features"]
        except (OSError, KeyError) as exc:
            raise InvalidInput(f"{self.path} is not an h5 file with a 'features' dataset: {exc}") from exc
        if self.dataset.ndim != 2:
            raise InvalidInput(f"{self.path}: 'features' must be 2-D (Nimg, D), got {self.dataset.shape}")
        attrs = self._file.attrs
        self.encoder = None
        if "encoder_name" in attrs:
            self.encoder = {"name": str(attrs["encoder_name"]), "version": int(attrs["encoder_version"]),
                            "sha256": str(attrs["encoder_sha256"])}

    @property
    def num_images(self) -> int:
        return int(self.dataset.shape[0])

    @property
    def dim(self) -> int:
        return int(self.dataset.shape[1])

    def names(self) -> list[str] | None:
        if "names" not in self._file:
            return None
        return [n.decode() if isinstance(n, bytes) else str(n) for n in self._file["names"][()]]

    def read(self, image_idxs: np.ndarray) -> np.ndarray:
        """Rows ``image_idxs`` (N,) in the order given (repeats allowed) -> (N, D) float32."""
        image_idxs = np.asarray(image_idxs, dtype=np.int64)
        unique, inverse = np.unique(image_idxs, return_inverse=True)  # sorted, as h5py requires
        rows = self.dataset[unique] if len(unique) else np.zeros((0, self.dim))  # (U, D)
        return np.asarray(rows, dtype=np.float32)[inverse.reshape(-1)]  # (N, D)

    def close(self) -> None:
        self._file.close()


class CaptionSplit:
    """One split: its captions in memory, its image features read from h5 on demand."""

    def __init__(self, name: str, captions: np.ndarray, image_idxs: np.ndarray, features: FeatureFile):
        self.name = name
        self.captions = captions  # (Ncap, T + 1) int32
        self.image_idxs = image_idxs  # (Ncap,)
        self.features = features
        if len(captions) and int(image_idxs.max()) >= features.num_images:
            raise FailedPrecondition(
                f"{name} captions refer to image {int(image_idxs.max())} but {features.path} has only "
                f"{features.num_images} rows; it was computed for other images")

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def feature_dim(self) -> int:
        return self.features.dim

    def image_ids(self) -> np.ndarray:
        """The distinct images that have captions, sorted."""
        return np.unique(self.image_idxs)

    def batch(self, caption_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Captions (N, T + 1), features (N, D) and image indices (N,) of the given caption rows."""
        caption_rows = np.asarray(caption_rows, dtype=np.int64)
        image_idxs = self.image_idxs[caption_rows]
        return self.captions[caption_rows], self.features.read(image_idxs), image_idxs

    def sample_minibatch(self, batch_size: int, rng: np.random.Generator):
        """A random minibatch drawn with replacement, as the assignment's ``sample_coco_minibatch``."""
        return self.batch(rng.integers(0, self.num_captions, size=batch_size))

    def minibatches(self, batch_size: int, rng: np.random.Generator | None = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of ``(captions (N, T + 1), features (N, D))``, shuffled when ``rng`` is given;
        the last minibatch may be smaller."""
        order = rng.permutation(self.num_captions) if rng is not None else np.arange(self.num_captions)
        for start in range(0, len(order), batch_size):
            captions, features, _ = self.batch(order[start: start + batch_size])
            yield captions, features

    def references(self, image_ids: Sequence[int]) -> list[np.ndarray]:
        """For each image, all its captions (k_i, T + 1)."""
        order = np.argsort(self.image_idxs, kind="stable")
        sorted_ids = self.image_idxs[order]
        out = []
        for image in image_ids:
            lo, hi = np.searchsorted(sorted_ids, [image, image + 1])
            out.append(self.captions[order[lo:hi]])
        return out


class ArrayCaptions:
    """An in-memory split with the interface of ``CaptionSplit`` (tests, small experiments).

    - captions: (Ncap, T + 1) word indices
    - features: (Ncap, D) one feature vector per caption
    """

    def __init__(self, captions: np.ndarray, features: np.ndarray):
        if len(captions) != len(features):
            raise ValueError(f"{len(captions)} captions but {len(features)} feature vectors")
        self.name = "array"
        self.captions = np.asarray(captions)
        self.feature_array = np.asarray(features, dtype=np.float32)
        self.image_idxs = np.arange(len(captions))

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def feature_dim(self) -> int:
        return self.feature_array.shape[1]

    def image_ids(self) -> np.ndarray:
        return self.image_idxs

    def batch(self, caption_rows):
        caption_rows = np.asarray(caption_rows, dtype=np.int64)
        return self.captions[caption_rows], self.feature_array[caption_rows], caption_rows

    def minibatches(self, batch_size: int, rng: np.random.Generator | None = None):
        order = rng.permutation(self.num_captions) if rng is not None else np.arange(self.num_captions)
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            yield self.captions[rows], self.feature_array[rows]

    def references(self, image_ids):
        return [self.captions[[i]] for i in image_ids]


@dataclass
class CocoCaptioningData:
    """A CS231n captioning data folder. Use as a context manager (it holds feature files open).

    ``train_features``/``val_features`` default to the CS231n file names (``pca`` picks the PCA
    ones); a relative path is taken inside ``data_dir``. ``max_train`` keeps the first captions only.
    """

    data_dir: Path
    idx_to_word: list[str]
    word_to_idx: dict[str, int]
    splits: dict[str, CaptionSplit]

    @classmethod
    def open(cls, data_dir: str | os.PathLike, *, train_features: str | os.PathLike | None = None,
             val_features: str | os.PathLike | None = None, pca: bool = False,
             splits: Sequence[str] = SPLITS, max_train: int | None = None) -> CocoCaptioningData:
        import h5py

        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FailedPrecondition(f"data folder {data_dir} does not exist")
        captions_path = data_dir / CAPTIONS_FILE
        for required in (captions_path, data_dir / VOCAB_FILE):
            if not required.is_file():
                raise FailedPrecondition(f"{required} does not exist: {data_dir} is not a CS231n captioning "
                                         f"folder ({CAPTIONS_FILE} and {VOCAB_FILE} are required)")
        idx_to_word, word_to_idx = load_vocab(data_dir / VOCAB_FILE)
        chosen = {"train": train_features, "val": val_features}
        opened: dict[str, CaptionSplit] = {}
        try:
            with h5py.File(captions_path, "r") as f:
                for split in splits:
                    if f"{split}_captions" not in f:
                        raise InvalidInput(f"{captions_path} has no '{split}_captions' dataset")
                    captions = np.asarray(f[f"{split}_captions"][()], dtype=np.int32)
                    image_idxs = np.asarray(f[f"{split}_image_idxs"][()], dtype=np.int64)
                    if split == "train" and max_train is not None:
                        captions, image_idxs = captions[:max_train], image_idxs[:max_train]
                    if captions.ndim != 2 or len(captions) != len(image_idxs):
                        raise InvalidInput(f"{captions_path}: {split} captions/image indices do not line up")
                    if len(captions) and (captions.min() < 0 or captions.max() >= len(idx_to_word)):
                        raise InvalidInput(f"{captions_path}: {split} captions hold indices outside the vocabulary")
                    path = Path(chosen.get(split) or default_feature_file(split, pca))
                    features = FeatureFile(path if path.is_absolute() else data_dir / path)
                    opened[split] = CaptionSplit(split, captions, image_idxs, features)
        except BaseException:
            for s in opened.values():
                s.features.close()
            raise
        dims = {s.feature_dim for s in opened.values()}
        if len(dims) > 1:
            raise FailedPrecondition(f"train and val feature files have different dimensions {sorted(dims)}")
        return cls(data_dir, idx_to_word, word_to_idx, opened)

    @property
    def feature_dim(self) -> int:
        return next(iter(self.splits.values())).feature_dim

    @property
    def encoder(self) -> dict | None:
        """The encoder recorded in the feature files (None for CS231n's own features)."""
        pins = {json.dumps(s.features.encoder, sort_keys=True) for s in self.splits.values()}
        if len(pins) > 1:
            raise FailedPrecondition(f"feature files of the splits come from different encoders: {sorted(pins)}")
        return json.loads(pins.pop()) if pins else None

    def split(self, name: str) -> CaptionSplit:
        if name not in self.splits:
            raise InvalidInput(f"split {name!r} is not open (open: {', '.join(self.splits)})", field="split")
        return self.splits[name]

    def urls(self, split: str) -> list[str] | None:
        path = self.data_dir / url_file(split)
        return path.read_text().split() if path.is_file() else None

    def close(self) -> None:
        for s in self.splits.values():
            s.features.close()

    def __enter__(self) -> CocoCaptioningData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- writing


def write_vocab(path: str | os.PathLike, idx_to_word: Sequence[str]) -> None:
    obj = {"idx_to_word": list(idx_to_word), "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}
    Path(path).write_text(json.dumps(obj))


def write_captions(path: str | os.PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``{split: (captions (Ncap, T + 1), image_idxs (Ncap,))}`` as ``coco2014_captions.h5``."""
    import h5py

    with h5py.File(path, "w") as f:
        for split, (captions, image_idxs) in splits.items():
            f.create_dataset(f"{split}_captions", data=np.asarray(captions, dtype=np.int32))
            f.create_dataset(f"{split}_image_idxs", data=np.asarray(image_idxs, dtype=np.int32))


class FeatureWriter:
    """Write a feature file of ``num_images`` rows in slices; the file appears whole or not at all."""

    def __init__(self, path: str | os.PathLike, num_images: int, dim: int, *, names: Sequence[str] | None = None,
                 encoder: dict | None = None):
        import h5py

        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = h5py.File(self._tmp, "w")
        chunk_rows = max(1, min(num_images, 256))
        self.dataset = self._file.create_dataset("features", shape=(num_images, dim), dtype=np.float32,
                                                 chunks=(chunk_rows, dim) if num_images else None)
        if names is not None:
            self._file.create_dataset("names", data=np.array([n.encode() for n in names], dtype=object),
                                      dtype=h5py.string_dtype())
        if encoder is not None:
            self._file.attrs["encoder_name"] = encoder["name"]
            self._file.attrs["encoder_version"] = int(encoder["version"])
            self._file.attrs["encoder_sha256"] = encoder["sha256"]

    def write(self, start: int, rows: np.ndarray) -> None:
        self.dataset[start: start + len(rows)] = rows

    def commit(self) -> Path:
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def write_features(path: str | os.PathLike, features: np.ndarray, *, names: Sequence[str] | None = None,
                   encoder: dict | None = None) -> Path:
    """Write a whole (Nimg, D) feature array as an h5 feature file."""
    features = np.asarray(features, dtype=np.float32)
    writer = FeatureWriter(path, len(features), features.shape[1], names=names, encoder=encoder)
    try:
        writer.write(0, features)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()
