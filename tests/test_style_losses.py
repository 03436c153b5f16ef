"""The style-transfer losses against straightforward loop/numpy implementations, and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.style import content_loss, extract_features, gram_matrix, style_loss, tv_loss
from pixelrpc.models.style.space import InputSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _tiny_trunk(dtype=torch.float64) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.Tanh(),
    ).to(dtype)


# ---------------------------------------------------------------------- straightforward references
def _gram_loop(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros((n, c, c))
    for i in range(n):
        f = x[i].reshape(c, h * w)
        out[i] = f @ f.T / (h * w * c)
    return out


def _tv_loop(img: np.ndarray, weight: float) -> float:
    n, c, h, w = img.shape
    total = 0.0
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    if y + 1 < h:
                        total += (img[i, ch, y + 1, x] - img[i, ch, y, x]) ** 2
                    if x + 1 < w:
                        total += (img[i, ch, y, x + 1] - img[i, ch, y, x]) ** 2
    return weight * total


def test_content_loss_is_weighted_sum_of_squares():
    cur, orig = _rand(2, 4, 5, 6, seed=1), _rand(2, 4, 5, 6, seed=2)
    expected = 0.37 * np.sum((cur.numpy() - orig.numpy()) ** 2)
    assert content_loss(0.37, cur, orig).item() == pytest.approx(expected, rel=1e-12)
    assert content_loss(0.37, cur, cur).item() == 0.0


def test_gram_matrix_batched_matches_per_sample_loop():
    x = _rand(3, 6, 5, 7, seed=3)
    got = gram_matrix(x)
    assert got.shape == (3, 6, 6)
    np.testing.assert_allclose(got.numpy(), _gram_loop(x.numpy()), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gram_matrix(x, normalize=False).numpy(), _gram_loop(x.numpy()) * 5 * 7 * 6,
                               rtol=1e-12)
    # symmetric, positive semi-definite
    np.testing.assert_allclose(got.numpy(), got.transpose(1, 2).numpy(), rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(got).min().item() > -1e-12


def test_style_loss_matches_norm_squared_per_layer():
    feats = [_rand(1, 3 + i, 8 - i, 6, seed=10 + i) for i in range(5)]
    layers, weights = (0, 2, 4), (300.0, 2.0, 0.5)
    targets = [gram_matrix(_rand(1, 3 + layer, 4, 4, seed=20 + layer)) for layer in layers]
    expected = sum(
        w * np.linalg.norm(_gram_loop(feats[layer].numpy())[0] - t.numpy()[0]) ** 2
        for layer, t, w in zip(layers, targets, weights, strict=True)
    )
    assert style_loss(feats, layers, targets, weights).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InvalidInput):
        style_loss(feats, layers, targets, weights[:2])


def test_tv_loss_matches_explicit_loops():
    img = _rand(2, 3, 5, 4, seed=4)
    assert tv_loss(img, 0.02).item() == pytest.approx(_tv_loop(img.numpy(), 0.02), rel=1e-12)
    flat = torch.full((1, 3, 6, 6), 0.7, dtype=torch.float64)
    assert tv_loss(flat, 1.0).item() == 0.0


def test_extract_features_returns_every_module_output_in_order():
    cnn = _tiny_trunk()
    x = _rand(2, 3, 9, 9, seed=5)
    feats = extract_features(x, cnn)
    assert len(feats) == len(cnn)
    expected = x
    for module, got in zip(cnn, feats, strict=True):
        expected = module(expected)
        assert torch.equal(got, expected)
    assert len(extract_features(x, cnn, upto=2)) == 3
    with pytest.raises(InvalidInput, match="layers 0..4"):
        extract_features(x, cnn, upto=5)


def test_squeezenet_trunk_has_thirteen_feature_maps():
    from pixelrpc.models import zoo

    trunk = zoo.build_squeezenet_features().eval()
    with torch.no_grad():
        feats = extract_features(torch.zeros(1, 3, 64, 64), trunk)
    assert len(feats) == 13
    assert [f.shape[1] for f in feats][:4] == [64, 64, 64, 128]


def test_total_loss_gradient_matches_centred_differences():
    """Gradient of content + style + tv with respect to the image, float64, centred differences."""
    cnn = _tiny_trunk()
    for p in cnn.parameters():
        p.requires_grad_(False)
    space = InputSpace(lo=torch.tensor([-120.0, -115.0, -100.0]).view(1, 3, 1, 1).double(),
                       hi=torch.tensor([130.0, 140.0, 150.0]).view(1, 3, 1, 1).double())
    content_feats = extract_features(space.to_model(_rand(1, 3, 6, 5, seed=6)), cnn)
    style_feats = extract_features(space.to_model(_rand(1, 3, 7, 7, seed=7)), cnn)
    targets = [gram_matrix(style_feats[i]) for i in (1, 4)]

    def total(z):
        feats = extract_features(space.to_model(z), cnn)
        return (content_loss(1e-3, feats[3], content_feats[3])
                + style_loss(feats, (1, 4), targets, (1e-4, 1e-2)) + tv_loss(z, 0.5))

    z = _rand(1, 3, 6, 5, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(total, (z,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradients_reach_the_image_only():
    """The loop asks autograd for the image's gradient alone: a trainable network gets no .grad."""
    from PIL import Image

    from pixelrpc.models.style import style_transfer_steps

    cnn = _tiny_trunk(torch.float32)
    assert all(p.requires_grad for p in cnn.parameters())
    rng = np.random.default_rng(0)
    content = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    style = Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8))
    steps = list(style_transfer_steps(content, [style], model=cnn, image_size=12, style_size=10, content_layer=3,
                                      style_layers=(1, 4), style_weights=(10.0, 1.0), iterations=3))
    assert [s.iteration for s in steps] == [1, 2, 3, 3] and steps[-1].final
    assert all(p.grad is None for p in cnn.parameters())
    assert steps[-1].image.size == (16, 12)
    # the image did move: its losses changed between the steps
    assert steps[0].total_loss != steps[1].total_loss
