"""Fooling images and class visualization on a small classifier trained here (a few seconds).

The data are 32 x 32 synthetic pictures of three shapes (square, disc, plus sign) in random bright or
dark colours at random places on a mid-grey noisy background.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import torch_threads

from pixelrpc.models import visualization as vis
from pixelrpc.models import zoo
from pixelrpc.models.errors import InvalidInput

CLASSES = ["square", "disc", "plus"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n pictures (n, 3, 32, 32) in [0, 1] and their labels (n,)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.6, (n, 32, 32, 3))
    labels = rng.integers(0, 3, n)
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(n):
        r = int(rng.integers(5, 9))
        cy, cx = rng.integers(r + 1, 32 - r - 1, 2)
        colour = rng.uniform(0.75, 1.0, 3) if rng.random() < 0.5 else rng.uniform(0.0, 0.15, 3)
        if labels[i] == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif labels[i] == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = ((abs(yy - cy) <= r) & (abs(xx - cx) <= 1)) | ((abs(xx - cx) <= r) & (abs(yy - cy) <= 1))
        images[i][mask] = colour
    return torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(labels)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN[0]) / STD[0]


@pytest.fixture(scope="module")
def shapes_model() -> zoo.ImageModel:
    with torch_threads(1):
        torch.manual_seed(0)
        nn = torch.nn
        net = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(16 * 8 * 8, 3))
        pixels, labels = make_shapes(800, seed=0)
        x = normalise(pixels)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(150):
            idx = torch.randint(0, len(x), (64,))
            loss = nn.functional.cross_entropy(net(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        model = zoo.ImageModel(net=net, features=net[:6], class_names=CLASSES, input_size=32, mean=MEAN, std=STD,
                               value_scale=1.0)
        test_pixels, test_labels = make_shapes(200, seed=1)
        with torch.no_grad():
            accuracy = (model(normalise(test_pixels)).argmax(1) == test_labels).float().mean()
        assert accuracy >= 0.85, f"the test classifier did not train (accuracy {accuracy:.2f})"
        return model


@pytest.fixture(scope="module")
def correct_images(shapes_model):
    """Eight held-out images the model classifies correctly, normalised, with their labels."""
    pixels, labels = make_shapes(40, seed=2)
    x = normalise(pixels)
    with torch.no_grad():
        right = shapes_model(x).argmax(1) == labels
    return x[right][:8], labels[right][:8]


# ---------------------------------------------------------------------------- fooling
def test_fooling_succeeds_with_a_small_change(shapes_model, correct_images):
    x, labels = correct_images
    target = (labels + 1) % 3
    result = vis.make_fooling_image(x, target, shapes_model, learning_rate=0.1, max_iters=300)
    assert result.succeeded.all()
    with torch.no_grad():
        assert torch.equal(shapes_model(result.images).argmax(1), target)
    assert torch.equal(result.original_prediction, labels) and torch.equal(result.predicted, target)
    assert (result.iterations >= 1).all()
    assert (result.relative_l2 < 0.10).all(), result.relative_l2
    # sizes are in [0, 1] pixel units: recompute them from the images
    change = (result.images - x) * STD[0]
    assert torch.allclose(result.l2, change.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.allclose(result.linf, change.flatten(1).abs().amax(1), rtol=1e-5)
    lo, hi = shapes_model.pixel_bounds()
    assert (result.images >= lo - 1e-6).all() and (result.images <= hi + 1e-6).all()


def test_fooling_generator_yields_every_step(shapes_model, correct_images):
    x, labels = correct_images[0][:1], correct_images[1][:1]
    target = (labels + 2) % 3
    items = list(vis.fooling_steps(x, target, shapes_model, learning_rate=0.1, max_iters=300))
    progress, result = items[:-1], items[-1]
    assert isinstance(result, vis.FoolingResult) and bool(result.succeeded[0])
    assert [p.iteration for p in progress] == list(range(1, int(result.iterations[0]) + 1))
    assert all(isinstance(p, vis.FoolingProgress) and not p.succeeded.any() for p in progress)
    # the step computed from the target score keeps raising it
    scores = [float(p.target_score[0]) for p in progress]
    assert scores[-1] > scores[0]
    # stopping the generator early is allowed and leaves nothing behind
    gen = vis.fooling_steps(x, target, shapes_model, learning_rate=0.1, max_iters=300)
    first = next(gen)
    gen.close()
    assert first.iteration == 1


def test_fooling_reports_failure_honestly(shapes_model, correct_images):
    x, labels = correct_images
    result = vis.make_fooling_image(x[:2], (labels[:2] + 1) % 3, shapes_model, learning_rate=1e-4, max_iters=3)
    assert not result.succeeded.any()
    assert result.iterations.tolist() == [3, 3]
    assert torch.equal(result.predicted, labels[:2])
    already = vis.make_fooling_image(x[:1], labels[:1], shapes_model)
    assert bool(already.succeeded[0]) and int(already.iterations[0]) == 0 and float(already.l2[0]) == 0.0


def test_fooling_validates_targets(shapes_model, correct_images):
    x, _ = correct_images
    with pytest.raises(InvalidInput, match="out of range") as info:
        vis.make_fooling_image(x[:1], 3, shapes_model)
    assert info.value.violations[0].field == "target_class"
    with pytest.raises(InvalidInput, match="max_iters"):
        vis.make_fooling_image(x[:1], 1, shapes_model, max_iters=-1)


# ---------------------------------------------------------------------------- class visualization
def test_class_visualization_reaches_the_target(shapes_model):
    result = vis.create_class_visualization([0, 1, 2], shapes_model, l2_reg=1e-3, learning_rate=3.0,
                                            num_iterations=60, blur_every=10, max_jitter=2, show_every=0, seed=0)
    assert isinstance(result, vis.ClassVisualizationResult)
    assert (result.target_probability >= 0.8).all(), result.target_probability
    with torch.no_grad():
        probs = shapes_model(result.images).softmax(1)
    assert torch.allclose(probs[torch.arange(3), torch.tensor([0, 1, 2])], result.target_probability)
    lo, hi = shapes_model.pixel_bounds()
    assert (result.images >= lo - 1e-6).all() and (result.images <= hi + 1e-6).all()
    assert len(result.pil) == 3 and result.pil[0].size == (32, 32)


def test_class_visualization_progress_and_seed(shapes_model):
    kwargs = dict(l2_reg=1e-3, learning_rate=3.0, num_iterations=12, blur_every=5, max_jitter=2, show_every=5)
    items = list(vis.class_visualization_steps(1, shapes_model, seed=3, **kwargs))
    progress, result = items[:-1], items[-1]
    assert [p.iteration for p in progress] == list(range(1, 13))
    assert [p.iteration for p in progress if p.preview is not None] == [1, 5, 10, 12]
    assert progress[0].preview[0].size == (32, 32)
    assert result.seed == 3 and result.iterations == 12
    again = vis.create_class_visualization(1, shapes_model, seed=3, **kwargs)
    other = vis.create_class_visualization(1, shapes_model, seed=4, **kwargs)
    assert torch.equal(result.images, again.images)
    assert not torch.equal(result.images, other.images)
    unseeded = vis.create_class_visualization(1, shapes_model, **kwargs)
    replay = vis.create_class_visualization(1, shapes_model, seed=unseeded.seed, **kwargs)
    assert torch.equal(unseeded.images, replay.images)


def test_class_visualization_validation(shapes_model):
    with pytest.raises(InvalidInput, match="out of range"):
        next(vis.class_visualization_steps(7, shapes_model))
    with pytest.raises(InvalidInput, match="max_jitter"):
        next(vis.class_visualization_steps(1, shapes_model, max_jitter=32))
    with pytest.raises(InvalidInput, match="num_iterations"):
        next(vis.class_visualization_steps(1, shapes_model, num_iterations=0))


def test_blur_and_jitter():
    x = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    x[0, :, 4, 4] = 1.0
    blurred = vis.gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape
    assert float(blurred.sum()) == pytest.approx(2.0, rel=1e-9)  # mass kept away from the borders
    assert torch.allclose(blurred, blurred.flip(2)) and torch.allclose(blurred, blurred.transpose(2, 3))
    g = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float64) ** 2)
    g = g / g.sum()
    assert torch.allclose(blurred[0, 0, 1:8, 4], g * g[3])  # separable Gaussian, sigma 1
    assert torch.equal(vis.jitter(vis.jitter(x, 3, -2), -3, 2), x)
    assert vis.jitter(x, 1, 2)[0, 0, 6, 5] == 1.0
