"""Style transfer end to end: arguments, schedule, previews, blending, colour, seeds, calibration.

The tests at the bottom use the real Caffe SqueezeNet 1.1 trunk and the assignment's images from
``<repo>/../shared/data/cs231n`` and are skipped where that folder is absent.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from pixelrpc.models import zoo
from pixelrpc.models.errors import Cancelled, CancelToken, InvalidInput, ModelCorrupt
from pixelrpc.models.style import (
    CAFFE_SQUEEZENET_MULTIPLIERS,
    MULTIPLIERS_KEY,
    PRESETS,
    InputSpace,
    WeightMultipliers,
    get_preset,
    gram_matrix,
    style_objective,
    style_transfer,
    style_transfer_steps,
)
from pixelrpc.models.style.calibrate import multipliers_for_scale, relative_losses
from pixelrpc.models.style.presets import multipliers_for
from pixelrpc.models.style.space import pixels_to_reference, to_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)  # smooth-ish, like a photo


def _trunk(final=torch.nn.ReLU) -> torch.nn.Sequential:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Conv2d(8, 8, 3, padding=1), final(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
    ).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


SMALL = dict(image_size=16, style_size=16, content_layer=3, style_layers=(1, 4), style_weights=(50.0, 5.0))


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, field", [
    (dict(content_layer=7), "content_layer"),
    (dict(style_layers=(1, 9), style_weights=(1.0, 1.0)), "style_layers[1]"),
    (dict(style_weights=(1.0,)), "style_weights"),
    (dict(style_weights=(1.0, -2.0)), "style_weights[1]"),
    (dict(init="zeros"), "init"),
    (dict(iterations=0), "iterations"),
    (dict(image_size=4), "image_size"),
    (dict(lr=0.0), "lr"),
    (dict(content_weight=float("nan")), "content_weight"),
    (dict(style_blend=(1.0, 2.0)), "style_blend"),
])
def test_bad_arguments_are_invalid_input_naming_the_field(kwargs, field):
    args = dict(SMALL, model=_trunk(), iterations=1)
    args.update(kwargs)
    with pytest.raises(InvalidInput) as info:
        style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], **args)  # raises before any step
    assert info.value.violations[0].field == field


def test_layer_range_is_read_from_the_model():
    trunk = zoo.build_squeezenet_features()
    with pytest.raises(InvalidInput, match=r"layers 0\.\.12"):
        style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], model=trunk, content_layer=13)


def test_style_images_are_needed_unless_style_weights_are_zero():
    with pytest.raises(InvalidInput, match="style image"):
        style_transfer_steps(_image(16, 16, 0), [], **dict(SMALL, model=_trunk()))
    steps = list(style_transfer_steps(_image(16, 16, 0), [], **dict(SMALL, model=_trunk(), iterations=2,
                                                                    style_weights=(0.0, 0.0))))
    assert steps[-1].final and steps[-1].style_loss == 0.0


# ---------------------------------------------------------------------- the loop
def test_progress_in_order_with_previews_and_schedule():
    steps = list(style_transfer_steps(_image(16, 20, 0), [_image(20, 16, 1)], model=_trunk(), iterations=12,
                                      decay_at=8, preview_every=5, seed=3, **SMALL))
    assert [s.iteration for s in steps] == list(range(1, 13)) + [12]
    assert [s.iteration for s in steps if s.preview is not None] == [5, 10]
    assert all(s.preview.size == (20, 16) for s in steps if s.preview is not None)
    assert [s.learning_rate for s in steps[:12]] == [3.0] * 8 + [0.1] * 4
    assert all(s.total_loss == pytest.approx(s.content_loss + s.style_loss + s.tv_loss) for s in steps)
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(steps, steps[1:], strict=False))
    final = steps[-1]
    assert final.final and final.image.size == (20, 16) and final.seed == 3


def test_image_is_clamped_until_the_last_ten_steps():
    """Before a step earlier than ``clamp_until`` the image is clamped to [-1.5, 1.5]; after, not."""
    content, style = _image(16, 16, 0), _image(16, 16, 1)
    objective = style_objective(content, [style], model=_trunk(), **SMALL)
    z = objective.initial_image()
    assert z.abs().max() > 1.5  # the content image itself pokes out of the clamp range
    with torch.no_grad():
        clamped = sum(objective.losses(z.clamp(-1.5, 1.5))).item()
        free = sum(objective.losses(z)).item()
    assert clamped != pytest.approx(free, rel=1e-3)

    def first_loss(**kw):
        return next(iter(style_transfer_steps(content, [style], model=_trunk(), **SMALL, **kw))).total_loss

    assert first_loss(iterations=11) == pytest.approx(clamped, rel=1e-5)  # default: clamp until 11 - 10
    assert first_loss(iterations=10) == pytest.approx(free, rel=1e-5)
    assert first_loss(iterations=10, clamp_until=1) == pytest.approx(clamped, rel=1e-5)


def test_cancel_token_stops_between_steps():
    token = CancelToken()
    gen = style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), iterations=50,
                               cancel=token, **SMALL)
    next(gen)
    next(gen)
    token.cancel("client went away")
    with pytest.raises(Cancelled, match="client went away"):
        next(gen)


def test_random_init_is_seeded():
    args = dict(SMALL, model=_trunk(), iterations=3, init="random")
    content, style = _image(16, 16, 0), _image(16, 16, 1)

    def png(seed):
        buf = io.BytesIO()
        style_transfer(content, [style], seed=seed, **args).save(buf, format="PNG")
        return buf.getvalue()

    assert png(11) == png(11)
    assert png(11) != png(12)


def test_styles_blend_by_weight():
    a, b = _image(16, 16, 1), _image(24, 20, 2)
    args = dict(SMALL, model=_trunk())
    only_a = style_objective(_image(16, 16, 0), [a], **args).style_targets
    blend_a = style_objective(_image(16, 16, 0), [a, b], style_blend=(2.0, 0.0), **args).style_targets
    only_b = style_objective(_image(16, 16, 0), [b], **args).style_targets
    mixed = style_objective(_image(16, 16, 0), [a, b], style_blend=(1.0, 3.0), **args).style_targets
    for ta, tb, tab, tm in zip(only_a, only_b, blend_a, mixed, strict=True):
        torch.testing.assert_close(tab, ta)
        torch.testing.assert_close(tm, 0.25 * ta + 0.75 * tb)


def test_same_size_styles_share_a_batch_and_match_separate_grams():
    a, b = _image(16, 16, 1), _image(16, 16, 2)
    trunk = _trunk()
    targets = style_objective(_image(16, 16, 0), [a, b], model=trunk, precision="float32", **SMALL).style_targets
    for layer, target in zip(SMALL["style_layers"], targets, strict=True):
        grams = []
        for img in (a, b):
            x = pixels_to_reference(to_pixels(img, 16))
            grams.append(gram_matrix(trunk[: layer + 1](x)))
        torch.testing.assert_close(target, 0.5 * grams[0] + 0.5 * grams[1])


def _iq(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img, dtype=np.float64) / 255.0
    i = rgb @ np.array([0.595716, -0.274453, -0.321263])
    q = rgb @ np.array([0.211456, -0.522591, 0.311135])
    return np.stack([i, q])


def test_preserve_color_keeps_the_content_chrominance():
    content = _image(24, 24, 0)
    style = Image.fromarray(np.tile(np.array([20, 40, 230], dtype=np.uint8), (24, 24, 1)))  # blue
    args = dict(SMALL, image_size=24, style_size=24, model=_trunk(), iterations=20, style_weights=(5e4, 5e3))
    kept = style_transfer(content, [style], preserve_color=True, **args)
    changed = style_transfer(content, [style], **args)
    target = _iq(content)
    err_kept = np.abs(_iq(kept) - target).mean()
    err_changed = np.abs(_iq(changed) - target).mean()
    assert err_kept < 0.02 < err_changed


# ---------------------------------------------------------------------- input space, presets, multipliers
def test_input_space_matches_the_model_preprocessing():
    img = _image(32, 32, 5)
    z = pixels_to_reference(to_pixels(img, 32))
    for order in ("RGB", "BGR"):
        model = zoo.ImageModel(net=torch.nn.Identity(), features=torch.nn.Sequential(torch.nn.Identity()),
                               class_names=[], input_size=32, mean=zoo.CAFFE_MEAN_PIXEL, std=zoo.CAFFE_STD,
                               value_scale=255.0, channel_order=order)
        torch.testing.assert_close(InputSpace.of(model).to_model(z), model.preprocess([img], 32),
                                   atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(InputSpace.reference().to_model(z), z, atol=1e-6, rtol=1e-6)


def test_clamp_bounds_in_caffe_units():
    model = zoo.ImageModel(net=torch.nn.Identity(), features=torch.nn.Sequential(torch.nn.Identity()),
                           class_names=[], input_size=32, mean=zoo.CAFFE_MEAN_PIXEL, std=zoo.CAFFE_STD,
                           value_scale=255.0)
    lo, hi = InputSpace.of(model).clamp_bounds()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(lo.flatten().numpy(), 255 * (mean - 1.5 * std) - np.array(zoo.CAFFE_MEAN_PIXEL),
                               rtol=1e-5)
    np.testing.assert_allclose(hi.flatten().numpy(), 255 * (mean + 1.5 * std) - np.array(zoo.CAFFE_MEAN_PIXEL),
                               rtol=1e-5)


def test_presets_carry_the_assignment_parameters():
    assert get_preset("composition_vii").kwargs() == dict(
        image_size=192, style_size=512, content_layer=3, content_weight=5e-2, style_layers=(1, 4, 6, 7),
        style_weights=(20000.0, 500.0, 12.0, 1.0), tv_weight=5e-2)
    assert PRESETS["the_scream"].style_weights == (200000.0, 800.0, 12.0, 1.0)
    assert PRESETS["starry_night"].content_weight == 6e-2
    with pytest.raises(InvalidInput, match="known presets"):
        get_preset("mona_lisa")


def test_multipliers_scale_the_weights():
    m = WeightMultipliers(content=0.5, style=0.01, tv=2.0)
    args = dict(SMALL, model=_trunk(), tv_weight=0.3, content_weight=0.2)
    plain = style_objective(_image(16, 16, 0), [_image(16, 16, 1)], **args).job
    scaled = style_objective(_image(16, 16, 0), [_image(16, 16, 1)], weight_multipliers=m.to_metadata(),
                             **args).job
    assert scaled.content_weight == pytest.approx(0.5 * plain.content_weight)
    assert scaled.style_weights == pytest.approx([0.01 * w for w in plain.style_weights])
    assert scaled.tv_weight == pytest.approx(2.0 * plain.tv_weight)
    assert WeightMultipliers.from_metadata({}) == WeightMultipliers()
    assert WeightMultipliers.from_metadata(m.to_metadata()) == m
    with pytest.raises(ModelCorrupt):
        WeightMultipliers.from_metadata({MULTIPLIERS_KEY: {"content": -1, "style": 1, "tv": 1}})
    with pytest.raises(ModelCorrupt):
        WeightMultipliers.from_metadata({MULTIPLIERS_KEY: {"contents": 1}})
    assert multipliers_for({"source": "torchvision"}) == WeightMultipliers()
    assert multipliers_for({"source": "caffe-mat"}) == CAFFE_SQUEEZENET_MULTIPLIERS
    assert multipliers_for({"source": "caffe-mat", **m.to_metadata()}) == m  # the manifest's own entry wins


def test_calibration_recovers_a_known_feature_scale():
    """A trunk whose every activation is k times larger balances at k times the scale (the property
    ``calibrate.balance_scale`` relies on): same ratios, hence the same bisection path."""
    base = _trunk()
    scaled = _trunk()
    k = 7.0
    with torch.no_grad():  # positive homogeneity: scale conv1 entirely and every later bias
        scaled[0].weight.mul_(k)
        for module in scaled:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.mul_(k)
    preset = get_preset("starry_night")
    small = type(preset)(**dict(vars(preset), image_size=16, style_size=16, style_layers=(1, 4, 6, 5)))
    content, style = _image(16, 16, 0), _image(16, 16, 1)
    a = relative_losses(base, content, style, small, 2.0, iterations=6)
    b = relative_losses(scaled, content, style, small, 2.0 * k, iterations=6)
    c = relative_losses(scaled, content, style, small, 2.0, iterations=6)
    assert b.rho_content == pytest.approx(a.rho_content, rel=1e-3)
    assert b.rho_style == pytest.approx(a.rho_style, rel=1e-3)
    assert (c.rho_content, c.rho_style) != pytest.approx((a.rho_content, a.rho_style), rel=1e-2)  # k matters
    m = multipliers_for_scale(k)
    assert (m.content, m.style, m.tv) == pytest.approx((1 / 49, 1 / 2401, 1.0))


# ---------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def caffe():
    mat = shared_path("sqz_notop.mat")
    import tempfile

    from pixelrpc.models.registry import ModelCache, Registry

    with tempfile.TemporaryDirectory() as root:
        registry = Registry(root)
        manifest = zoo.import_caffe_squeezenet(registry, mat)
        loaded = ModelCache(registry).get(manifest.name)
    multipliers = multipliers_for(manifest.metadata)
    assert multipliers == CAFFE_SQUEEZENET_MULTIPLIERS  # from the manifest, or the fallback for "caffe-mat"
    return loaded.model, multipliers


def _open(name: str) -> Image.Image:
    return Image.open(shared_path("styles", name)).convert("RGB")


@pytest.mark.shared
@pytest.mark.slow
def test_starry_night_preset_on_tubingen(caffe):
    model, multipliers = caffe
    content, style = _open("tubingen.jpg"), _open("starry_night.jpg")
    args = dict(get_preset("starry_night").kwargs(), model=model, weight_multipliers=multipliers)
    steps = list(style_transfer_steps(content, [style], iterations=200, **args))
    first, final = steps[0], steps[-1]
    objective = style_objective(content, [style], **args)
    with torch.no_grad():
        noise_content = objective.losses(objective.noise_image(seed=0))[0].item()
    assert final.final and final.iteration == 200
    assert final.style_loss <= 0.1 * first.style_loss
    assert final.content_loss < noise_content
    assert final.image.size == (256, 192)


@pytest.mark.shared
def test_feature_inversion_from_noise(caffe):
    model, multipliers = caffe
    steps = list(style_transfer_steps(
        _open("tubingen.jpg"), [], model=model, weight_multipliers=multipliers, image_size=64, init="random",
        content_layer=3, content_weight=6e-2, style_layers=(), style_weights=(), tv_weight=2e-2,
        iterations=100, decay_at=50, seed=0))
    assert steps[-1].content_loss <= 0.1 * steps[0].content_loss


@pytest.mark.shared
def test_texture_synthesis_from_noise(caffe):
    model, multipliers = caffe
    steps = list(style_transfer_steps(
        _open("tubingen.jpg"), [_open("starry_night.jpg")], model=model, weight_multipliers=multipliers,
        image_size=64, style_size=64, init="random", content_weight=0.0, tv_weight=2e-2,
        style_layers=(1, 4, 6, 7), style_weights=(300000, 1000, 15, 3), iterations=100, decay_at=50, seed=0))
    assert steps[-1].style_loss <= 0.1 * steps[0].style_loss
