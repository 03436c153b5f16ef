"""The SqueezeNet model zoo: preprocessing, registry round trips, torchvision and Caffe imports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from pixelrpc.models import zoo
from pixelrpc.models.errors import InvalidInput, ModelCorrupt
from pixelrpc.models.registry import ModelCache
from pixelrpc.models.registry.serialization import torch_to_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _saved_torchvision(tmp_path, num_classes=1000, seed=0):
    torch.manual_seed(seed)
    net = zoo.build_squeezenet(num_classes).eval()
    path = tmp_path / "squeezenet1_1-test.pth"
    torch.save(net.state_dict(), path)
    return net, path


# ---------------------------------------------------------------------------- ImageModel
def _model(channel_order="RGB", mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, value_scale=1.0, size=16):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return zoo.ImageModel(net=net, features=net[:1], class_names=[], input_size=size, mean=mean, std=std,
                          value_scale=value_scale, channel_order=channel_order)


@pytest.mark.parametrize("order,mean,std,scale", [
    ("RGB", zoo.IMAGENET_MEAN, zoo.IMAGENET_STD, 1.0),
    ("BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), 255.0),
])
def test_preprocess_deprocess_round_trip(order, mean, std, scale):
    model = _model(order, mean, std, scale, size=16)
    image = _random_image(16, 16)
    x = model.preprocess([image, image.convert("L")])  # (2, 3, 16, 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    back = model.deprocess(x)
    assert np.array_equal(np.asarray(back[0]), np.asarray(image))
    assert back[1].size == (16, 16)
    # the normalisation is per channel, in the model's channel order
    pixel = np.asarray(image, dtype=np.float64)[0, 0] / 255.0  # (3,) RGB
    if order == "BGR":
        pixel = pixel[::-1]
    expected = (pixel * scale - np.array(mean)) / np.array(std)
    assert np.allclose(x[0, :, 0, 0].numpy(), expected, atol=1e-5)


def test_preprocess_resizes_shorter_side_and_centre_crops():
    model = _model(size=16)
    wide = Image.new("RGB", (64, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (8, 0, 56, 32))  # white middle, wider than the crop
    x = model.preprocess([wide])
    assert x.shape == (1, 3, 16, 16)
    lo, hi = model.pixel_bounds()
    assert torch.allclose(x, hi.expand_as(x), atol=1e-5)  # the crop kept only the white middle
    uncropped = model.preprocess([wide], crop=False)
    assert uncropped.shape == (1, 3, 16, 32)
    with pytest.raises(InvalidInput):
        model.preprocess([wide, Image.new("RGB", (32, 32))], crop=False)


def test_pixel_bounds_are_black_and_white():
    model = _model("BGR", (104.0, 117.0, 123.0), (2.0, 2.0, 2.0), 255.0)
    lo, hi = model.pixel_bounds()
    black = model.preprocess([Image.new("RGB", (16, 16), (0, 0, 0))])
    white = model.preprocess([Image.new("RGB", (16, 16), (255, 255, 255))])
    assert lo.shape == hi.shape == (1, 3, 1, 1)
    assert torch.allclose(black[:, :, :1, :1], lo) and torch.allclose(white[:, :, :1, :1], hi)


def test_image_model_rejects_bad_normalisation():
    with pytest.raises(InvalidInput):
        _model(std=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidInput):
        _model(channel_order="RBG")


# ---------------------------------------------------------------------------- torchvision import
def test_torchvision_import_round_trips_logits(tmp_path, registry):
    net, path = _saved_torchvision(tmp_path)
    manifest = zoo.import_torchvision_squeezenet(registry, path)
    meta = manifest.metadata
    assert manifest.name == "squeezenet1_1" and set(manifest.tasks) == {"classification", "feature-extraction"}
    assert meta["architecture"] == "squeezenet1_1" and meta["num_classes"] == 1000
    assert meta["input_size"] == 224 and meta["value_scale"] == 1.0 and meta["channel_order"] == "RGB"
    assert meta["mean"] == list(zoo.IMAGENET_MEAN) and meta["std"] == list(zoo.IMAGENET_STD)
    assert meta["class_names"] == zoo.imagenet_class_names() and len(meta["class_names"]) == 1000
    assert meta["feature_layers"] == list(zoo.SQUEEZENET_LAYER_NAMES)
    assert [f.name for f in manifest.files] == [zoo.WEIGHTS_FILE]

    loaded = ModelCache(registry).get("squeezenet1_1").model
    assert isinstance(loaded, zoo.ImageModel) and loaded.num_classes == 1000
    assert len(loaded.features) == 13 and not loaded.net.training
    assert all(not p.requires_grad for p in loaded.net.parameters())
    x = loaded.preprocess([_random_image(80, 60, 1), _random_image(64, 64, 2)], size=64)  # (2, 3, 64, 64)
    with torch.no_grad():  # same weights, same layout (served: zoo.memory_format_for): the same bits
        before, after = _served_layout(net)(x), loaded(x)
    assert after.shape == (2, 1000)
    assert torch.equal(before, after)
    assert loaded.embed(x).shape == (2, 512)


def _served_layout(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in the weight layout a CPU-served model keeps (channels-last: ``zoo.memory_format_for``)."""
    return net.to(memory_format=zoo.memory_format_for("cpu"))


def test_served_networks_keep_the_faster_layout_and_the_same_numbers(registry):
    """CPU models are served channels-last (oneDNN's NHWC kernels: 2-3x faster for SqueezeNet here);
    the outputs equal the NCHW network's within float32 rounding."""
    net = zoo.build_squeezenet(4).eval()
    zoo.publish_squeezenet(registry, "cl", net, class_names=list("abcd"), input_size=32)
    loaded = ModelCache(registry).get("cl").model
    assert zoo.memory_format_for("cpu") == torch.channels_last
    conv = loaded.net.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)
    assert zoo.memory_format_for("cuda") == torch.contiguous_format


def test_torchvision_import_with_other_class_count(tmp_path, registry):
    net, path = _saved_torchvision(tmp_path, num_classes=5)
    with pytest.raises(InvalidInput, match="5 classes"):
        zoo.import_torchvision_squeezenet(registry, path)
    with pytest.raises(InvalidInput, match="5 outputs but 2 class names"):
        zoo.import_torchvision_squeezenet(registry, path, class_names=["a", "b"])
    names = ["ant", "bee", "cat", "dog", "eel"]
    manifest = zoo.import_torchvision_squeezenet(registry, path, name="tiny", class_names=names)
    loaded = ModelCache(registry).get("tiny").model
    assert loaded.class_names == names and manifest.metadata["num_classes"] == 5
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(_served_layout(net)(x), loaded(x))


def test_torchvision_import_rejects_other_files(tmp_path, registry):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InvalidInput, match="junk.pth"):
        zoo.import_torchvision_squeezenet(registry, junk)
    other = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(InvalidInput, match="not a torchvision SqueezeNet"):
        zoo.import_torchvision_squeezenet(registry, other)
    with pytest.raises(InvalidInput, match="cannot read"):
        zoo.import_torchvision_squeezenet(registry, tmp_path / "missing.pth")
    assert registry.names() == []


def test_loader_refuses_weights_that_do_not_fit(registry):
    net = zoo.build_squeezenet(3)
    state = net.state_dict()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    meta = {"architecture": "squeezenet1_1", "num_classes": 3, "class_names": ["a", "b", "c"], "input_size": 32,
            "mean": [0, 0, 0], "std": [1, 1, 1], "value_scale": 1.0}
    registry.publish("bad", {zoo.WEIGHTS_FILE: torch_to_bytes(state)}, tasks=["classification"],
                     framework="torch", metadata=meta)
    with pytest.raises(ModelCorrupt, match=r"features\.0\.weight"):
        ModelCache(registry).get("bad")
    registry.publish("bad2", {zoo.WEIGHTS_FILE: torch_to_bytes(net.state_dict())}, tasks=["classification"],
                     framework="torch", metadata={**meta, "class_names": ["a"]})
    with pytest.raises(ModelCorrupt, match="num_classes 3 but 1 class names"):
        ModelCache(registry).get("bad2")


def test_publish_trunk_only(registry):
    trunk = zoo.build_squeezenet_features()
    with pytest.raises(InvalidInput, match="classification"):
        zoo.publish_squeezenet(registry, "trunk", trunk, class_names=[])
    with pytest.raises(InvalidInput, match="no classifier"):
        zoo.publish_squeezenet(registry, "trunk", trunk, class_names=["x"], tasks=("feature-extraction",))
    manifest = zoo.publish_squeezenet(registry, "trunk", trunk, class_names=[], tasks=("feature-extraction",))
    assert manifest.metadata["architecture"] == "squeezenet1_1-features"
    assert manifest.metadata["num_parameters"] == 722_496
    loaded = ModelCache(registry).get("trunk").model
    assert not loaded.has_classifier and loaded.net is loaded.features
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), _served_layout(trunk.eval())(x))


# ---------------------------------------------------------------------------- Caffe .mat trunk
def _numpy_conv1(mat_path, image: Image.Image) -> np.ndarray:
    """conv1 of the Caffe network computed directly: BGR 0-255 minus the BGR mean pixel, stride 2,
    no padding, kernel HWIO from the file. Returns (64, H', W')."""
    import scipy.io

    kernel, bias = scipy.io.loadmat(str(mat_path))["conv1"][0]  # (3, 3, 3, 64), (1, 64)
    rgb = np.asarray(image, dtype=np.float64)  # (H, W, 3)
    bgr = rgb[:, :, ::-1] - np.array([104.006, 116.669, 122.679])
    windows = np.lib.stride_tricks.sliding_window_view(bgr, (3, 3), axis=(0, 1))[::2, ::2]  # (H', W', 3, 3, 3)
    out = np.einsum("ijcyx,yxco->oij", windows, kernel.astype(np.float64)) + bias.reshape(-1, 1, 1)
    return out


def test_caffe_mat_trunk_import(registry):
    mat = shared_path("sqz_notop.mat")
    features = zoo.caffe_squeezenet_features(mat)
    assert len(features) == 13
    assert sum(p.numel() for p in features.parameters()) == 722_496
    manifest = zoo.import_caffe_squeezenet(registry, mat)
    meta = manifest.metadata
    assert manifest.name == "squeezenet1_1-caffe" and manifest.tasks == ("feature-extraction",)
    assert meta["architecture"] == "squeezenet1_1-features" and meta["class_names"] == []
    assert meta["mean"] == list(zoo.CAFFE_MEAN_PIXEL) and meta["std"] == [1.0, 1.0, 1.0]
    assert meta["value_scale"] == 255.0 and meta["channel_order"] == "RGB"
    assert meta["num_parameters"] == 722_496
    from pixelrpc.models.style.presets import CAFFE_SQUEEZENET_MULTIPLIERS, multipliers_for

    assert multipliers_for(meta) == CAFFE_SQUEEZENET_MULTIPLIERS  # read from the manifest entry
    assert meta["style_weight_multipliers"]["style"] == CAFFE_SQUEEZENET_MULTIPLIERS.style

    model = ModelCache(registry).get("squeezenet1_1-caffe").model
    image = Image.open(shared_path("kitten.jpg")).convert("RGB").resize((63, 47))
    x = model.preprocess([image], crop=False, size=47)  # (1, 3, 47, 63)
    assert x.shape == (1, 3, 47, 63)
    with torch.no_grad():
        ours = model.features[0](x)[0].double().numpy()  # (64, 23, 31)
    direct = _numpy_conv1(mat, image)
    assert ours.shape == direct.shape == (64, 23, 31)
    assert np.abs(ours - direct).max() <= 1e-4 * np.abs(direct).max()
    with torch.no_grad():
        assert model(model.preprocess([image])).shape == (1, 512, 13, 13)  # 224 px in


def test_caffe_mat_errors(tmp_path, registry):
    import scipy.io

    mat = shared_path("sqz_notop.mat")
    layers = {k: v for k, v in scipy.io.loadmat(str(mat)).items() if not k.startswith("__")}
    partial = tmp_path / "partial.mat"
    scipy.io.savemat(str(partial), {k: v for k, v in layers.items() if k != "fire9/expand3x3"})
    with pytest.raises(InvalidInput, match="fire9/expand3x3"):
        zoo.caffe_squeezenet_features(partial)
    with pytest.raises(InvalidInput, match="no such"):
        zoo.caffe_squeezenet_features(tmp_path / "absent.mat")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"\x00" * 200)
    with pytest.raises(InvalidInput):
        zoo.import_caffe_squeezenet(registry, garbage)
    assert registry.names() == []
