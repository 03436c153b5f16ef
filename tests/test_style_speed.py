"""Issue 11 on style transfer: the symmetric Gram backward, bfloat16 and float32 precision, the L-BFGS
option (domain and proto), the notebook reference loop and the style distance, the Caffe multipliers,
and the benchmark's smoke run. No timing assertions."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, shared_path
from PIL import Image

from pixelrpc.models.errors import Cancelled, CancelToken, InvalidInput
from pixelrpc.models.style import (
    CAFFE_SQUEEZENET_MULTIPLIERS,
    WeightMultipliers,
    gram_matrix,
    style_objective,
    style_transfer_steps,
)
from pixelrpc.models.style.notebook import notebook_gram, notebook_style_transfer, style_distance
from pixelrpc.models.style.presets import CALIBRATED_CAFFE_MULTIPLIERS, multipliers_for
from pixelrpc.models.style.transfer import native_bf16


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def _trunk() -> torch.nn.Sequential:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
    ).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


SMALL = dict(image_size=16, style_size=16, content_layer=3, style_layers=(1, 4), style_weights=(50.0, 5.0), seed=0)


def test_gram_backward_is_autograds_in_both_layouts():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram_matrix, (x,))
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(gram_matrix, (cl,))
    w = torch.randn(2, 5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad((gram_matrix(cl) * w).sum(), [cl])
    (ref,) = torch.autograd.grad((notebook_gram(x) * w).sum(), [x])
    torch.testing.assert_close(ours, ref)


def test_bfloat16_features_give_a_float32_gram_close_to_float32():
    x = torch.rand(1, 6, 8, 8)
    g = gram_matrix(x.bfloat16())
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, gram_matrix(x), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_both_precisions_lower_the_loss(precision):
    steps = list(style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), iterations=12,
                                      decay_at=10, precision=precision, **SMALL))
    assert steps[-1].final and steps[-1].style_loss < steps[0].style_loss
    assert steps[-1].evaluations == 12


def test_auto_precision_follows_the_cpu():
    job = style_objective(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), **SMALL).job
    assert job.precision == ("bfloat16" if native_bf16() else "float32")
    lbfgs = style_objective(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), optimizer="lbfgs", **SMALL).job
    assert lbfgs.precision == "float32"


@pytest.mark.parametrize(("kwargs", "field"), [(dict(optimizer="sgd"), "optimizer"),
                                               (dict(precision="fp8"), "precision")])
def test_bad_optimizer_or_precision_is_invalid_input(kwargs, field):
    with pytest.raises(InvalidInput) as info:
        style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), **SMALL, **kwargs)
    assert info.value.violations[0].field == field


def test_lbfgs_lowers_the_loss_below_adams_in_fewer_evaluations():
    args = dict(SMALL, model=_trunk(), precision="float32")
    adam = list(style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], iterations=40, decay_at=36, **args))
    lbfgs = list(style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], iterations=20, optimizer="lbfgs",
                                      **args))
    target = adam[-1].total_loss
    assert lbfgs[-1].final and lbfgs[-1].learning_rate == 1.0
    evals = [p.evaluations for p in lbfgs]
    assert evals == sorted(evals) and evals[-1] <= 6 * 20
    reached = [p.evaluations for p in lbfgs[:-1] if p.total_loss <= target]
    assert reached and reached[0] < adam[-1].evaluations


def test_lbfgs_polls_the_cancel_token():
    token = CancelToken()
    gen = style_transfer_steps(_image(16, 16, 0), [_image(16, 16, 1)], model=_trunk(), iterations=10,
                               optimizer="lbfgs", cancel=token, **SMALL)
    next(gen)
    token.cancel("test")
    with pytest.raises(Cancelled):
        next(gen)


def test_caffe_trunk_takes_the_notebook_weights_and_old_manifests_are_upgraded():
    assert CAFFE_SQUEEZENET_MULTIPLIERS == WeightMultipliers()
    assert multipliers_for({"source": "caffe-mat"}) == CAFFE_SQUEEZENET_MULTIPLIERS
    old = {"source": "caffe-mat", **CALIBRATED_CAFFE_MULTIPLIERS.to_metadata()}
    assert multipliers_for(old) == CAFFE_SQUEEZENET_MULTIPLIERS
    # the same numbers on another model are that model's own choice
    assert multipliers_for({"source": "torchvision", **CALIBRATED_CAFFE_MULTIPLIERS.to_metadata()}) \
        == CALIBRATED_CAFFE_MULTIPLIERS


def test_notebook_loop_matches_the_domain_loop_in_float32():
    """Same trunk, weights, schedule: the notebook's loop and style_transfer_steps(precision=float32)
    give the same image and the same style distance."""
    net, content, style = _trunk(), _image(16, 16, 0), _image(16, 16, 1)
    kw = {k: v for k, v in SMALL.items() if k != "seed"}
    weights = dict(content_weight=0.06, tv_weight=0.02)
    run = notebook_style_transfer(net, content, style, iterations=15, decay_lr_at=12, **kw, **weights)
    ours = list(style_transfer_steps(content, [style], model=net, iterations=15, decay_at=12, precision="float32",
                                     **SMALL, **weights))[-1].image
    assert len(run.step_seconds) == 15
    a, b = np.asarray(run.image, dtype=float), np.asarray(ours, dtype=float)
    assert np.abs(a - b).max() <= 2
    da = style_distance(net, run.image, style, 16, kw["style_layers"])
    db = style_distance(net, ours, style, 16, kw["style_layers"])
    assert da == pytest.approx(db, rel=0.05) and da > 0
    assert style_distance(net, style, style, 16, kw["style_layers"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.shared
@pytest.mark.slow
def test_style_benchmark_smoke():
    shared_path("sqz_notop.mat")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PIXELRPC_BENCH_RESULTS", None)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "style.py"), "--smoke"], capture_output=True,
                          text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = [line for line in proc.stdout.splitlines() if line.strip().startswith("[")]
    assert len(rows) == 6, proc.stdout
    for expected in ("s/iter", "style distance", "L-BFGS", "over gRPC", "RSS"):
        assert any(expected in row for row in rows), proc.stdout
