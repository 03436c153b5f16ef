"""Image models served by PixelRPC: SqueezeNet 1.1 (Iandola et al., 2016, arXiv:1602.07360).

An ``ImageModel`` bundles a network with everything needed to feed it: the square input side, the
normalisation (``mean``/``std`` in the units of ``value_scale``) and the channel order the weights
expect. The registry stores the weights as safetensors and those facts in the manifest's metadata, so
a loaded model always preprocesses images the way its weights were trained.

Two weight sources are supported, both with torchvision's ``squeezenet1_1`` module structure:

- torchvision's ImageNet state dict (``squeezenet1_1-b8a52dc0.pth``): a full classifier, inputs in
  [0, 1] normalised by the ImageNet mean/std;
- the Caffe SqueezeNet 1.1 convolutional trunk exported to ``.mat`` (``sqz_notop.mat``): a
  feature extractor without classifier head, inputs RGB in [0, 255] minus a mean pixel.

Dimensions: N images, C channels, H x W spatial size, S the square input side, K classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt
from pixelrpc.models.imaging import (
    ImageHeader,
    ImageLimits,
    WorkingPlan,
    check_geometry,
    plan_working,
    resize_to,
    working_box,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mean pixel of the Caffe SqueezeNet 1.1 training set, in R, G, B order, on the 0-255 scale.
CAFFE_MEAN_PIXEL = (122.679, 116.669, 104.006)
CAFFE_STD = (1.0, 1.0, 1.0)

ARCH_CLASSIFIER = "squeezenet1_1"
ARCH_FEATURES = "squeezenet1_1-features"
WEIGHTS_FILE = "weights.safetensors"
TORCHVISION_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"

# Names of the 13 modules of SqueezeNet 1.1's ``features``, after the Caffe prototxt.
SQUEEZENET_LAYER_NAMES = (
    "conv1", "relu1", "pool1", "fire2", "fire3", "pool3", "fire4", "fire5", "pool5",
    "fire6", "fire7", "fire8", "fire9",
)
# Index in ``features`` of each fire module (fire2 .. fire9).
_FIRE_INDEX = {2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12}
_FIRE_PARTS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}


@dataclass
class ImageModel:
    """A network plus the preprocessing its weights expect.

    ``mean`` and ``std`` are per channel, in the model's ``channel_order``, on the ``value_scale``
    scale: a pixel p in [0, 1] (RGB) becomes ``(p * value_scale - mean) / std``.
    """

    net: torch.nn.Module  # eval mode; the full classifier, or the trunk if no head
    features: torch.nn.Sequential  # the conv trunk (SqueezeNet 1.1: 13 modules)
    class_names: list[str]  # [] for feature-extraction-only models
    input_size: int  # square side S
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_scale: float  # 1.0: pixels in [0, 1] before normalisation; 255.0: Caffe (0-255)
    channel_order: str = "RGB"
    layer_names: list[str] = field(default_factory=lambda: list(SQUEEZENET_LAYER_NAMES))

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise InvalidInput(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise InvalidInput(f"mean and std need 3 values each with std > 0, got {self.mean}, {self.std}")
        if self.value_scale <= 0:
            raise InvalidInput(f"value_scale must be > 0, got {self.value_scale}")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.net.eval()

    # ------------------------------------------------------------------ facts
    @property
    def num_classes(self) -> int:
        """K, the number of classes of the head (0 for a feature extractor)."""
        return len(self.class_names)

    @property
    def has_classifier(self) -> bool:
        return self.num_classes > 0

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    def _channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        return mean, std

    # ------------------------------------------------------------------ pixels <-> tensors
    def preprocess(self, images: Sequence[Image.Image], size: int | None = None, *,
                   crop: bool = True, limits: ImageLimits | None = None) -> torch.Tensor:
        """Turn PIL images into the normalised batch the network expects.

        Each image is resized so its shorter side is ``size`` (default ``input_size``) and, when
        ``crop`` is true, centre-cropped to ``size`` x ``size``; only the cropped region is resampled
        (``imaging.working_box``), so the working tensor is S x S whatever the image's shape. With
        ``crop=False`` the aspect ratio is kept, so every image must come out the same size to form a
        batch. Images beyond ``limits`` (aspect ratio, upscale, working size; default
        ``ImageLimits()``) are refused before anything is allocated.

        Inputs:
        - images: N PIL images of any mode and size.
        Returns: x, a float32 tensor (N, 3, S, S) on the model's device (S = size).
        """
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            raise InvalidInput("preprocess needs at least one image", field="images")
        side = int(size or self.input_size)
        if side < 8:
            raise InvalidInput(f"image size must be at least 8 pixels, got {side}", field="size")
        limits = limits or ImageLimits()
        arrays = [_resize_to_tensor(img, side, crop, limits) for img in images]
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) != 1:
            raise InvalidInput(f"images resized to different shapes {sorted(shapes)}; use crop=True to batch them")
        x = torch.stack(arrays).to(self.device)  # (N, 3, H, W) in [0, 1], RGB
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean, std = self._channel_stats()
        return (x * self.value_scale - mean) / std

    def plan_input(self, header: ImageHeader, limits: ImageLimits) -> WorkingPlan:
        """How an encoded image becomes this model's input (``preprocess``), decided from its header.

        ``imaging.decode_working`` with this plan gives the S x S RGB image ``preprocess`` would have
        made from the decoded image, without ever holding more than the decoder's buffer.
        """
        return plan_working(header, self.input_size, crop=True, resample=Image.Resampling.BICUBIC, limits=limits)

    def deprocess(self, x: torch.Tensor) -> list[Image.Image]:
        """Inverse of ``preprocess`` (without the resize), clamped to valid pixels.

        Inputs:
        - x: normalised images (N, 3, H, W) or one image (3, H, W).
        Returns: N RGB PIL images of size W x H.
        """
        x = x.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)  # (1, 3, H, W)
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidInput(f"deprocess expects (N, 3, H, W), got {tuple(x.shape)}")
        mean, std = self._channel_stats()
        pixels = (x.float().to(mean.device) * std + mean) / self.value_scale
        if self.channel_order == "BGR":
            pixels = pixels.flip(1)
        pixels = (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
        hwc = pixels.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
        return [Image.fromarray(a, mode="RGB") for a in hwc]

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of black and white: (lo, hi), each (1, 3, 1, 1), for clamping."""
        mean, std = self._channel_stats()
        return (0.0 - mean) / std, (self.value_scale - mean) / std

    # ------------------------------------------------------------------ features
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled trunk features.

        Inputs:
        - x: normalised images (N, 3, S, S).
        Returns: (N, C) features (C = 512 for SqueezeNet 1.1).
        """
        return self.features(x).mean(dim=(2, 3))  # (N, C, h, w) -> (N, C)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output: class scores (N, K), or trunk features (N, C, h, w) without a head."""
        return self.net(x)


def _resize_to_tensor(img: Image.Image, side: int, crop: bool, limits: ImageLimits) -> torch.Tensor:
    """One PIL image -> (3, H, W) float32 RGB in [0, 1], shorter side ``side`` (centre crop if asked)."""
    import numpy as np

    w, h = img.size
    check_geometry(w, h, side, limits)
    geometry = working_box(w, h, side, crop)
    out = geometry.size
    if out[0] * out[1] > limits.max_pixels:
        raise InvalidInput(f"the image is {w}x{h}: preprocess would make {out[0]}x{out[1]} pixels, over "
                           f"{limits.max_pixels:,} (max_image_pixels)", field="images")
    img = resize_to(img, geometry, Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


# ---------------------------------------------------------------------- building and loading
def build_squeezenet(num_classes: int) -> torch.nn.Module:
    """torchvision's SqueezeNet 1.1 with ``num_classes`` outputs, randomly initialised (no download)."""
    import torchvision

    if int(num_classes) < 1:
        raise InvalidInput(f"num_classes must be >= 1, got {num_classes}", field="num_classes")
    return torchvision.models.squeezenet1_1(weights=None, num_classes=int(num_classes))


def build_squeezenet_features() -> torch.nn.Sequential:
    """The 13-module SqueezeNet 1.1 trunk, randomly initialised: (N, 3, S, S) -> (N, 512, h, w)."""
    return build_squeezenet(1).features


CHANNELS_LAST_DEVICES = ("cpu",)  # device types whose served networks keep weights channels-last


def memory_format_for(device: str | torch.device) -> torch.memory_format:
    """The layout a served network's weights take on ``device``.

    Channels-last on CPU: oneDNN's NHWC convolutions run SqueezeNet 1.1 far faster than NCHW ones
    (measured on the 2-core reference host, 2 torch threads: a 224 px forward 13.6 -> 5.1 ms, forward +
    backward 22.9 -> 13.3 ms, the 512 px trunk 58 -> 22 ms), and an NCHW input needs no conversion:
    the weights' layout picks the kernels. Other devices keep the default layout (not measured here).
    Numbers differ from NCHW by float32 rounding only (about 1e-5 on the logits).
    """
    kind = torch.device(device).type
    return torch.channels_last if kind in CHANNELS_LAST_DEVICES else torch.contiguous_format


def _prepare(net: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Eval mode, on ``device`` in its preferred layout (``memory_format_for``), parameters frozen:
    a shared model never accumulates .grad."""
    net = net.to(device).eval().to(memory_format=memory_format_for(device))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, error=ModelCorrupt):
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append("wrong shapes " + ", ".join(
                f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:4]))
        raise error(f"{what} does not fit SqueezeNet 1.1: " + "; ".join(parts))
    module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def load_squeezenet(manifest, read, device: str | torch.device = "cpu") -> ImageModel:
    """Registry loader for architectures ``squeezenet1_1`` and ``squeezenet1_1-features``.

    ``read(filename) -> bytes`` returns a sha256-verified file of the model.
    """
    from pixelrpc.models.registry.serialization import torch_from_bytes

    meta = manifest.metadata
    arch = meta.get("architecture")
    try:
        class_names = [str(c) for c in meta.get("class_names", [])]
        input_size = int(meta["input_size"])
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        value_scale = float(meta["value_scale"])
        channel_order = str(meta.get("channel_order", "RGB"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelCorrupt(f"model {manifest.ref}: metadata lacks or mangles {exc!s}") from exc
    state = torch_from_bytes(read(WEIGHTS_FILE))
    if arch == ARCH_CLASSIFIER:
        num_classes = int(meta.get("num_classes", len(class_names)))
        if num_classes != len(class_names):
            raise ModelCorrupt(f"model {manifest.ref}: num_classes {num_classes} but "
                               f"{len(class_names)} class names in its metadata")
        net = build_squeezenet(num_classes)
        _load_state(net, state, f"model {manifest.ref}")
        features = net.features
    elif arch == ARCH_FEATURES:
        if class_names:
            raise ModelCorrupt(f"model {manifest.ref} is a feature extractor but lists class names")
        features = build_squeezenet_features()
        trunk_state = {k.removeprefix("features."): v for k, v in state.items()}
        _load_state(features, trunk_state, f"model {manifest.ref}")
        net = features
    else:
        raise ModelCorrupt(f"model {manifest.ref}: load_squeezenet cannot load architecture {arch!r}")
    net = _prepare(net, device)
    return ImageModel(net=net, features=features, class_names=class_names, input_size=input_size,
                      mean=mean, std=std, value_scale=value_scale, channel_order=channel_order,
                      layer_names=list(meta.get("feature_layers", SQUEEZENET_LAYER_NAMES)))


# ---------------------------------------------------------------------- publishing
def publish_squeezenet(registry, name: str, net: torch.nn.Module, *, class_names: Sequence[str] | None,
                       tasks: Sequence[str] = ("classification", "feature-extraction"),
                       input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       value_scale: float = 1.0, channel_order: str = "RGB",
                       metadata: Mapping | None = None, extra_files: Mapping[str, bytes] | None = None):
    """Publish a SqueezeNet 1.1 (full classifier, or its ``features`` trunk alone) as a new version.

    A full model (it has ``.classifier``) needs one class name per output; a bare trunk needs none
    and should not list the ``classification`` task. ``extra_files`` adds files (e.g. golden examples).
    """
    from pixelrpc.models.registry.serialization import torch_to_bytes

    class_names = [str(c) for c in (class_names or [])]
    tasks = tuple(tasks)
    if hasattr(net, "classifier") and hasattr(net, "features"):
        num_classes = int(net.classifier[1].out_channels)
        if len(class_names) != num_classes:
            raise InvalidInput(f"the network has {num_classes} outputs but {len(class_names)} class names "
                               "were given; pass one name per class", field="class_names")
        arch, state, trunk = ARCH_CLASSIFIER, net.state_dict(), net.features
    elif isinstance(net, torch.nn.Sequential) and len(net) == len(SQUEEZENET_LAYER_NAMES):
        if class_names:
            raise InvalidInput("a bare SqueezeNet trunk has no classifier, so it takes no class names",
                               field="class_names")
        if "classification" in tasks:
            raise InvalidInput("a bare SqueezeNet trunk cannot serve the 'classification' task", field="tasks")
        num_classes, arch, trunk = 0, ARCH_FEATURES, net
        state = {f"features.{k}": v for k, v in net.state_dict().items()}
    else:
        raise InvalidInput(f"publish_squeezenet expects a torchvision SqueezeNet 1.1 or its 13-module "
                           f"features, got {type(net).__name__}")
    _load_state(build_squeezenet(num_classes).features if num_classes else build_squeezenet_features(),
                {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")},
                "the network", error=InvalidInput)
    if int(input_size) < 8:
        raise InvalidInput(f"input_size must be >= 8, got {input_size}", field="input_size")
    meta = {
        "architecture": arch,
        "num_classes": num_classes,
        "input_size": int(input_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "value_scale": float(value_scale),
        "channel_order": channel_order,
        "class_names": class_names,
        "feature_layers": list(SQUEEZENET_LAYER_NAMES),
        "feature_channels": int(trunk[-1].expand1x1.out_channels + trunk[-1].expand3x3.out_channels),
        "num_parameters": int(sum(v.numel() for v in state.values())),
    }
    clash = sorted(set(metadata or {}) & set(meta))
    if clash:
        raise InvalidInput(f"metadata may not override {clash}: pass them as arguments", field="metadata")
    meta.update(dict(metadata or {}))
    ImageModel(net=torch.nn.Identity(), features=torch.nn.Sequential(), class_names=class_names,
               input_size=meta["input_size"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
               value_scale=meta["value_scale"], channel_order=channel_order)  # validates the numbers
    return registry.publish(name, {WEIGHTS_FILE: torch_to_bytes(state), **dict(extra_files or {})},
                            tasks=tasks, framework="torch", metadata=meta)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names torchvision ships with its SqueezeNet 1.1 weights (no download)."""
    import torchvision

    return list(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])


def import_torchvision_squeezenet(registry, pth_path, name: str = "squeezenet1_1",
                                  class_names: Sequence[str] | None = None):
    """Publish torchvision's SqueezeNet 1.1 state dict (e.g. ``squeezenet1_1-b8a52dc0.pth``).

    The file is read with ``weights_only=True``. The number of classes comes from the state dict;
    1000-class weights get the ImageNet class names unless ``class_names`` is given.
    """
    from pixelrpc.models.registry.serialization import torch_state_from_pth

    path = Path(pth_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read torchvision weights {str(path)!r}: {exc.strerror}",
                           field="torchvision_weights") from exc
    try:
        state = torch_state_from_pth(data)
    except ModelCorrupt as exc:
        raise InvalidInput(f"{path}: {exc.message}", field="torchvision_weights") from exc
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head = state.get("classifier.1.weight")
    if not isinstance(head, torch.Tensor) or head.dim() != 4:
        raise InvalidInput(f"{path} is not a torchvision SqueezeNet 1.1 state dict (no 'classifier.1.weight')",
                           field="torchvision_weights")
    num_classes = int(head.shape[0])
    if class_names is None:
        if num_classes != 1000:
            raise InvalidInput(f"{path} has {num_classes} classes; pass their names (class_names)",
                               field="class_names")
        class_names = imagenet_class_names()
    net = build_squeezenet(num_classes)
    _load_state(net, state, str(path), error=InvalidInput)
    return publish_squeezenet(
        registry, name, net.eval(), class_names=class_names,
        metadata={"source": "torchvision", "source_file": path.name,
                  "source_sha256": hashlib.sha256(data).hexdigest()},
    )


def download_torchvision_squeezenet(dest_dir: str | Path | None = None) -> Path:
    """Fetch ``squeezenet1_1-b8a52dc0.pth`` through torchvision (network!). Only on explicit request."""
    try:
        from torch.hub import download_url_to_file, get_dir
    except ImportError as exc:  # pragma: no cover - torch always has hub
        raise FailedPrecondition(f"torch.hub is unavailable: {exc}") from exc
    folder = Path(dest_dir) if dest_dir is not None else Path(get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / TORCHVISION_URL.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    try:
        download_url_to_file(TORCHVISION_URL, str(target), hash_prefix="b8a52dc0", progress=False)
    except Exception as exc:
        raise FailedPrecondition(
            f"could not download {TORCHVISION_URL} ({type(exc).__name__}: {exc}); this machine seems "
            "offline: download the file elsewhere and use --torchvision-weights FILE.pth"
        ) from exc
    return target


# ---------------------------------------------------------------------- the Caffe .mat trunk
def _read_mat(mat_path) -> dict:
    try:
        import scipy.io
    except ImportError as exc:  # pragma: no cover
        raise FailedPrecondition("reading .mat weights needs scipy (pip install scipy)") from exc
    path = Path(mat_path)
    try:
        return scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise InvalidInput(f"no such .mat file: {str(path)!r}", field="caffe_mat") from None
    except Exception as exc:
        raise InvalidInput(f"{path} is not a readable MATLAB .mat file: {exc}", field="caffe_mat") from exc


def _mat_layer(mat: dict, key: str, path) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``[kernel (kh, kw, Cin, Cout), bias (1, Cout)]`` entry as torch (Cout, Cin, kh, kw), (Cout,)."""
    import numpy as np

    if key not in mat:
        raise InvalidInput(f"{path} has no layer {key!r}; expected the sqz_notop.mat layout "
                           "(conv1, fireN/squeeze1x1|expand1x1|expand3x3)", field="caffe_mat")
    entry = np.asarray(mat[key])
    if entry.dtype != object or entry.size != 2:
        raise InvalidInput(f"{path}: layer {key!r} should hold [kernel, bias], got {entry.dtype} {entry.shape}",
                           field="caffe_mat")
    kernel, bias = (np.asarray(a, dtype=np.float32) for a in entry.flat)
    if kernel.ndim != 4:
        raise InvalidInput(f"{path}: kernel of {key!r} should be 4-D HWIO, got {kernel.shape}", field="caffe_mat")
    weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # HWIO -> (Cout, Cin, kh, kw)
    return weight, torch.from_numpy(bias.reshape(-1).copy())  # (Cout,)


def caffe_squeezenet_features(mat_path) -> torch.nn.Sequential:
    """The Caffe SqueezeNet 1.1 trunk from a ``.mat`` file, as torchvision's 13-module ``features``.

    The file holds 25 layers (``conv1`` and ``fire2..fire9`` x ``squeeze1x1|expand1x1|expand3x3``),
    each ``[kernel HWIO, bias]``. Caffe's ceil-mode max pooling and unpadded stride-2 ``conv1`` are
    exactly torchvision's layers. Caffe's ``conv1`` reads BGR images (its users swap R and B, then
    subtract the BGR mean pixel (104.006, 116.669, 122.679)); this trunk has conv1's input channels
    reversed instead, so it reads RGB on 0-255 minus ``CAFFE_MEAN_PIXEL`` (the same mean, RGB order)
    and computes exactly what the Caffe network computes on the swapped image.
    Returns: the trunk (N, 3, S, S) -> (N, 512, h, w) in eval mode.
    """
    mat = _read_mat(mat_path)
    state = {}
    w, b = _mat_layer(mat, "conv1", mat_path)
    # The Caffe weights read B, G, R planes; reversing conv1's input channels makes the trunk take RGB.
    state["0.weight"], state["0.bias"] = w.flip(1).contiguous(), b
    for fire, index in _FIRE_INDEX.items():
        for part, module in _FIRE_PARTS.items():
            w, b = _mat_layer(mat, f"fire{fire}/{part}", mat_path)
            state[f"{index}.{module}.weight"], state[f"{index}.{module}.bias"] = w, b
    extra = sorted(k for k in mat if not k.startswith("__") and k != "conv1"
                   and not any(k == f"fire{f}/{p}" for f in _FIRE_INDEX for p in _FIRE_PARTS))
    if extra:
        raise InvalidInput(f"{mat_path} has layers beyond the SqueezeNet 1.1 trunk: {extra[:5]}",
                           field="caffe_mat")
    features = build_squeezenet_features()
    _load_state(features, state, str(mat_path), error=InvalidInput)
    return features.eval()


def import_caffe_squeezenet(registry, mat_path, name: str = "squeezenet1_1-caffe"):
    """Publish the Caffe SqueezeNet 1.1 trunk of ``mat_path`` as a ``feature-extraction`` model."""
    from pixelrpc.models.style.presets import CAFFE_SQUEEZENET_MULTIPLIERS

    features = caffe_squeezenet_features(mat_path)
    data = Path(mat_path).read_bytes()
    return publish_squeezenet(
        registry, name, features, class_names=[], tasks=("feature-extraction",),
        input_size=224, mean=CAFFE_MEAN_PIXEL, std=CAFFE_STD, value_scale=255.0, channel_order="RGB",
        metadata={"source": "caffe-mat", "source_file": Path(mat_path).name, "conv1_channels_reversed": True,
                  "source_sha256": hashlib.sha256(data).hexdigest(),
                  # calibrated once for the style presets (models/style/calibrate.py)
                  **CAFFE_SQUEEZENET_MULTIPLIERS.to_metadata()},
    )

