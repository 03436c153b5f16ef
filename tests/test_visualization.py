"""Saliency, SmoothGrad, Integrated Gradients, classification and rendering (pixelrpc.models.visualization)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrpc.models import visualization as vis
from pixelrpc.models import zoo
from pixelrpc.models.errors import Cancelled, CancelToken, FailedPrecondition, InvalidInput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def squeezenet() -> zoo.ImageModel:
    """A randomly initialised SqueezeNet 1.1 with 10 classes, eval mode, frozen."""
    torch.manual_seed(0)
    net = zoo.build_squeezenet(10).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return zoo.ImageModel(net=net, features=net.features, class_names=[f"c{i}" for i in range(10)],
                          input_size=48, mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, value_scale=1.0)


def _live_targets(model: zoo.ImageModel, X: torch.Tensor) -> torch.Tensor:
    """The top class of each image: its score is positive, so its gradient is not killed by the last ReLU."""
    with torch.no_grad():
        scores = model(X)
    assert (scores.amax(1) > 0).all()
    return scores.argmax(1)


def _smooth_net(num_classes: int = 3) -> torch.nn.Module:
    """A small differentiable-everywhere classifier (tanh, average pooling) for exact calculus checks."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 3 * 3, num_classes)).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# ---------------------------------------------------------------------------- vanilla saliency
def test_saliency_equals_captum(squeezenet):
    from captum.attr import Saliency

    torch.manual_seed(2)
    X = torch.randn(3, 3, 48, 48)
    y = _live_targets(squeezenet, X)
    ours = vis.compute_saliency_maps(X, y, squeezenet)
    theirs = Saliency(squeezenet.net).attribute(X.clone().requires_grad_(True), target=y, abs=True).amax(dim=1)
    assert ours.shape == (3, 48, 48) and (ours >= 0).all()
    assert ours.abs().sum() > 0
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-8)


def test_batched_saliency_equals_per_image(squeezenet):
    torch.manual_seed(3)
    X = torch.randn(5, 3, 48, 48)
    y = _live_targets(squeezenet, X)
    batched = vis.compute_saliency_maps(X, y, squeezenet, batch_size=4)  # chunks of 4 and 1
    single = torch.cat([vis.compute_saliency_maps(X[i:i + 1], y[i:i + 1], squeezenet, batch_size=1)
                        for i in range(5)])
    assert torch.allclose(batched, single, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in squeezenet.net.parameters())


def test_saliency_gradient_matches_centred_differences():
    net = _smooth_net()
    torch.manual_seed(4)
    X = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2])
    grads, scores = vis.input_gradients(X, y, net)
    assert grads.dtype == torch.float64
    eps = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(12):
        n, c, h, w = (int(rng.integers(0, s)) for s in X.shape)
        plus, minus = X.clone(), X.clone()
        plus[n, c, h, w] += eps
        minus[n, c, h, w] -= eps
        numeric = (net(plus)[n, y[n]] - net(minus)[n, y[n]]) / (2 * eps)
        assert abs(float(numeric) - float(grads[n, c, h, w])) <= 1e-7 * max(1.0, abs(float(numeric)))
    assert torch.allclose(scores, net(X).gather(1, y[:, None]).squeeze(1))
    saliency = vis.compute_saliency_maps(X, y, net)
    assert torch.equal(saliency, grads.abs().amax(dim=1))


# ---------------------------------------------------------------------------- SmoothGrad
def test_smoothgrad_reduces_to_vanilla_without_noise(squeezenet):
    torch.manual_seed(5)
    X = torch.randn(2, 3, 48, 48)
    y = _live_targets(squeezenet, X)
    smooth = vis.smoothgrad(X, y, squeezenet, noise_level=0.0, samples=3)
    assert torch.allclose(smooth.maps, vis.compute_saliency_maps(X, y, squeezenet), rtol=1e-5, atol=1e-8)


def test_smoothgrad_is_seeded_and_batch_invariant(squeezenet):
    torch.manual_seed(6)
    X = torch.randn(3, 3, 48, 48)
    y = _live_targets(squeezenet, X)
    a = vis.smoothgrad(X, y, squeezenet, noise_level=0.2, samples=4, seed=11, batch_size=5)
    b = vis.smoothgrad(X, y, squeezenet, noise_level=0.2, samples=4, seed=11, batch_size=2)
    alone = vis.smoothgrad(X[1:2], y[1:2], squeezenet, noise_level=0.2, samples=4, seed=11)
    other = vis.smoothgrad(X, y, squeezenet, noise_level=0.2, samples=4, seed=12)
    assert a.seed == 11 and a.maps.shape == (3, 48, 48)
    assert torch.allclose(a.maps, b.maps, rtol=1e-5, atol=1e-8)
    assert torch.allclose(a.maps[1], alone.maps[0], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(a.maps, other.maps)
    # the mean of |gradient| over noisy copies, computed here by hand for sample 0 and 1 of image 0
    sigma = 0.2 * (X[0].max() - X[0].min())
    from pixelrpc.models.visualization.saliency import _unit_noise

    manual = sum(vis.input_gradients((X[0] + sigma * _unit_noise(X.shape[1:], 11, s).float())[None], y[:1],
                                     squeezenet)[0].abs() for s in range(4)) / 4
    assert torch.allclose(a.attributions[0], manual[0], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------- Integrated Gradients
def test_integrated_gradients_match_captum(squeezenet):
    from captum.attr import IntegratedGradients

    net = zoo.build_squeezenet(10)
    net.load_state_dict(squeezenet.net.state_dict())
    model64 = zoo.ImageModel(net=net.double().eval(), features=net.features, class_names=squeezenet.class_names,
                             input_size=48, mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, value_scale=1.0)
    torch.manual_seed(7)
    X = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    y = _live_targets(model64, X)
    baseline = model64.pixel_bounds()[0].double().expand_as(X)  # black
    ours = vis.integrated_gradients(X, y, model64, baseline="black", steps=12, rule="riemann_trapezoid",
                                    batch_size=5)
    theirs = IntegratedGradients(model64.net).attribute(X, baselines=baseline, target=y, n_steps=12,
                                                        method="riemann_trapezoid", internal_batch_size=7)
    assert ours.attributions.abs().sum() > 0
    err = (ours.attributions - theirs).abs().max() / theirs.abs().max()
    assert err <= 1e-4
    # Captum's weights sum to (steps - 1) / steps; the proper trapezoidal rule is that times steps / (steps - 1)
    proper = vis.integrated_gradients(X, y, model64, baseline="black", steps=12, batch_size=24)
    assert torch.allclose(proper.attributions, ours.attributions * 12 / 11, rtol=1e-9, atol=1e-12)


def test_integrated_gradients_completeness():
    net = _smooth_net()
    torch.manual_seed(8)
    X = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    result = vis.integrated_gradients(X, y, net, baseline="zero", steps=64, batch_size=7)
    difference = net(X).gather(1, y[:, None]).squeeze(1) - net(torch.zeros_like(X)).gather(1, y[:, None]).squeeze(1)
    sums = result.attributions.flatten(1).sum(1)
    assert torch.allclose(result.completeness_gap, sums - difference, atol=1e-12)
    assert (result.completeness_gap.abs() <= 1e-3 * difference.abs()).all()
    coarse = vis.integrated_gradients(X, y, net, baseline="zero", steps=4)
    assert (coarse.completeness_gap.abs() > result.completeness_gap.abs()).all()  # O(1 / steps^2) error
    assert result.maps.shape == (3, 8, 8) and torch.equal(result.maps, result.attributions.abs().amax(1))


def test_integrated_gradients_batch_invariant_and_baselines(squeezenet):
    torch.manual_seed(9)
    X = torch.randn(3, 3, 48, 48)
    y = _live_targets(squeezenet, X)
    a = vis.integrated_gradients(X, y, squeezenet, steps=5, batch_size=4)
    b = vis.integrated_gradients(X, y, squeezenet, steps=5, batch_size=15)
    assert torch.allclose(a.attributions, b.attributions, rtol=1e-4, atol=1e-7)
    grey = torch.zeros(3, 48, 48)
    c = vis.integrated_gradients(X, y, squeezenet, steps=5, baseline=grey)
    d = vis.integrated_gradients(X, y, squeezenet, steps=5, baseline="zero")
    assert torch.allclose(c.attributions, d.attributions)
    with pytest.raises(InvalidInput, match="baseline"):
        vis.integrated_gradients(X, y, squeezenet, baseline=torch.zeros(3, 8, 8))
    with pytest.raises(InvalidInput, match="steps"):
        vis.integrated_gradients(X, y, squeezenet, steps=1)
    with pytest.raises(InvalidInput, match="rule"):
        vis.integrated_gradients(X, y, squeezenet, rule="simpson")


def test_saliency_dispatch_validation_and_cancellation(squeezenet):
    X = torch.randn(2, 3, 48, 48)
    with pytest.raises(InvalidInput, match="out of range.*10 classes") as info:
        vis.saliency(X, [1, 10], squeezenet)
    assert info.value.violations[0].field == "class"
    with pytest.raises(InvalidInput, match="method"):
        vis.saliency(X, [1, 2], squeezenet, method="guided")
    with pytest.raises(InvalidInput, match=r"\(N, 3, H, W\)"):
        vis.saliency(X[0], [1], squeezenet)
    with pytest.raises(InvalidInput, match="one class index per image"):
        vis.saliency(X, [1, 2, 3], squeezenet)
    token = CancelToken()
    token.cancel("client went away")
    with pytest.raises(Cancelled, match="client went away"):
        vis.saliency(X, [1, 2], squeezenet, method="integrated_gradients", cancel=token)
    trunk = zoo.ImageModel(net=squeezenet.features, features=squeezenet.features, class_names=[], input_size=48,
                           mean=zoo.IMAGENET_MEAN, std=zoo.IMAGENET_STD, value_scale=1.0)
    with pytest.raises(FailedPrecondition, match="feature extractor"):
        vis.saliency(X, [1, 2], trunk)
    result = vis.saliency(X, 3, squeezenet.net)  # a bare module and one class for all
    assert result.method == "vanilla" and result.maps.shape == (2, 48, 48)
    with torch.no_grad():
        top = squeezenet(X).argmax(1)
    for method in vis.METHODS:
        found = vis.saliency(X, [1, 2], squeezenet, method, samples=2, steps=3)
        assert torch.equal(found.predicted, top), method


# ---------------------------------------------------------------------------- classify
def test_classify_orders_probabilities(squeezenet):
    torch.manual_seed(10)
    X = torch.randn(2, 3, 48, 48)
    top = vis.classify(X, squeezenet, top_k=3)
    with torch.no_grad():
        probs = squeezenet(X).softmax(1)
    assert [len(t) for t in top] == [3, 3]
    for n, preds in enumerate(top):
        assert preds[0].class_index == int(probs[n].argmax())
        assert [p.probability for p in preds] == sorted((p.probability for p in preds), reverse=True)
        assert all(p.label == f"c{p.class_index}" for p in preds)
        assert preds[0].probability == pytest.approx(float(probs[n].max()), rel=1e-6)
    assert len(vis.classify(X, squeezenet, top_k=50)[0]) == 10
    with pytest.raises(InvalidInput, match="top_k"):
        vis.classify(X, squeezenet, top_k=0)


# ---------------------------------------------------------------------------- rendering
def test_heatmap_and_overlay():
    saliency = torch.zeros(6, 8)
    saliency[2, 3] = 5.0
    heat = vis.saliency_heatmap(saliency, percentile=100)
    assert heat.size == (8, 6) and heat.mode == "RGB"
    arr = np.asarray(heat)
    assert arr[2, 3].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]
    half = np.asarray(vis.saliency_heatmap(torch.full((2, 2), 0.5).index_put_((torch.tensor(0), torch.tensor(0)),
                                                                              torch.tensor(1.0)), percentile=100))
    assert half[1, 1].tolist() == [255, 128, 0]  # matplotlib "hot" at 0.5
    base = Image.new("RGB", (8, 6), (10, 200, 30))
    overlay = np.asarray(vis.saliency_overlay(base, saliency, alpha=1.0, percentile=100))
    assert overlay[0, 0].tolist() == [10, 200, 30]  # zero saliency leaves the image
    assert overlay[2, 3].tolist() == [255, 255, 255]  # full saliency is the heat colour
    with pytest.raises(InvalidInput):
        vis.saliency_heatmap(torch.zeros(1, 6, 8))


def test_fooling_comparison_panels():
    original = Image.new("RGB", (10, 12), (100, 100, 100))
    fooled = original.copy()
    fooled.putpixel((4, 5), (120, 100, 80))
    panel = vis.fooling_comparison(original, fooled, magnify=10)
    assert panel.size == (30, 12 + 14)
    arr = np.asarray(panel)
    assert arr[14:, :10].tolist() == np.asarray(original).tolist()
    assert arr[14:, 10:20].tolist() == np.asarray(fooled).tolist()
    assert arr[14, 20].tolist() == [128, 128, 128]  # no change: mid-grey
    assert arr[14 + 5, 24].tolist() == [255, 128, 0]  # +20 and -20 levels magnified 10x, clamped
