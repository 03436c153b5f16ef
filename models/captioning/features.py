"""Image features for captioning, from a registered feature-extraction model (the *encoder*).

An encoder is the object the registry loads for a ``feature-extraction`` model (an ``ImageModel``
of ``pixelrpc.models.zoo``); only two of its methods are used here:
``preprocess(list of PIL images) -> (N, 3, S, S)`` tensor and ``embed((N, 3, S, S)) -> (N, D)``,
e.g. SqueezeNet 1.1's conv trunk average-pooled to D = 512 (Iandola et al., "SqueezeNet", 2016).

``extract_features`` writes a folder of images, in file-name order, as a captioning feature file
(see ``pixelrpc.models.captioning.data``) with the image names and the encoder's identity beside.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pixelrpc.models.captioning.data import FeatureWriter
from pixelrpc.models.errors import FailedPrecondition, InvalidInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FailedPrecondition(f"image folder {folder} does not exist")
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def embed_images(encoder, images: Sequence) -> np.ndarray:
    """Feature vectors of PIL RGB images.

    Inputs:
    - encoder: an object with ``preprocess`` and ``embed`` (see the module docstring)
    - images: N PIL images

    Returns (N, D) float32.
    """
    import torch

    if not images:
        raise InvalidInput("no images to embed", field="images")
    with torch.inference_mode():
        x = encoder.preprocess(list(images))  # (N, 3, S, S)
        device = _device_of(encoder)
        if device is not None:
            x = x.to(device)
        features = encoder.embed(x)  # (N, D)
    return features.detach().float().cpu().numpy().reshape(len(images), -1)


def _device_of(encoder):
    net = getattr(encoder, "features", None)
    if net is None:
        net = getattr(encoder, "net", None)
    if net is None:
        return None
    for param in net.parameters():
        return param.device
    return None


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"cannot read image {path}: {exc}", field="images") from exc


def extract_features(encoder, image_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                     encoder_pin: dict | None = None, batch_size: int = 16,
                     check: Callable[[], None] | None = None) -> Iterator[int]:
    """Write the features of every image of ``image_dir`` (in file-name order) to ``out_path``.

    A generator: yields the number of images done after each batch; the file appears (atomically)
    once all are done, with datasets ``features`` (Nimg, D) float32 and ``names`` (Nimg,), and the
    attributes ``encoder_name``, ``encoder_version``, ``encoder_sha256`` from ``encoder_pin``.
    Closing the generator early (or ``check`` raising) leaves no file behind.
    """
    paths = list_images(image_dir)
    if not paths:
        raise FailedPrecondition(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    first = embed_images(encoder, [_open_image(paths[0])])  # (1, D): learn D before allocating
    writer = FeatureWriter(out_path, len(paths), first.shape[1], names=[p.name for p in paths],
                           encoder=encoder_pin)
    committed = False
    try:
        writer.write(0, first)
        done = 1
        yield done
        while done < len(paths):
            if check is not None:
                check()
            chunk = paths[done: done + batch_size]
            writer.write(done, embed_images(encoder, [_open_image(p) for p in chunk]))  # (B, D)
            done += len(chunk)
            yield done
        writer.commit()
        committed = True
    finally:
        if not committed:
            writer.abort()


def load_pinned_encoder(cache, captioner_manifest):
    """The encoder a captioner was trained with, loaded through a ``ModelCache``.

    Raises FailedPrecondition when the captioner has no encoder (it was trained on features computed
    elsewhere, e.g. CS231n's PCA features, so it takes feature vectors only), or when the registry
    lacks that exact encoder (same name and version, same sha256).
    """
    from pixelrpc.models.errors import ModelNotFound

    pin = captioner_manifest.metadata.get("encoder")
    dim = captioner_manifest.metadata.get("input_dim")
    if not pin:
        raise FailedPrecondition(
            f"captioner {captioner_manifest.ref} was trained on precomputed features without an encoder "
            f"(e.g. the CS231n PCA features), so it takes feature vectors, not images: send features "
            f"of dimension {dim}")
    label = f"{pin['name']}:{pin['version']} (sha256 {str(pin['sha256'])[:12]}…)"
    try:
        loaded = cache.get(pin["name"], int(pin["version"]))
    except ModelNotFound:
        raise FailedPrecondition(
            f"captioner {captioner_manifest.ref} needs its encoder {label}, which is not in this "
            "server's registry; publish that exact model (pixelrpc models import ...) or send feature "
            "vectors instead of images") from None
    if loaded.manifest.sha256 != pin["sha256"]:
        raise FailedPrecondition(
            f"captioner {captioner_manifest.ref} needs its encoder {label}, but the registry's "
            f"{loaded.manifest.ref} has sha256 {loaded.manifest.sha256[:12]}…: a different model under the "
            "same name and version; restore the original or re-train the captioner")
    return loaded
