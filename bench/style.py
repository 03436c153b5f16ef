"""Style transfer speed: seconds per iteration at 192, 384 and 512 px with the Caffe SqueezeNet trunk.

Three ways, same job (starry_night preset on tubingen.jpg, Adam on the pixels):
- in process: ``pixelrpc.models.style.style_transfer_steps``;
- through gRPC: ``StyleClient.stylize`` against a local server (client-side wall time per step);
- reference: a straightforward loop written here as the assignment's reference solution would be
  (every module of the trunk run each step, a per-sample Python loop for the Gram matrices,
  ``norm() ** 2`` losses, ``loss.backward()``).
The first step of each run is excluded (allocations, lazy init).

    python bench/style.py [--sizes 192,384,512] [--iterations 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "cs231n"


# ---------------------------------------------------------------------- the straightforward reference
def _gram_loop(features: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    grams = []
    for i in range(n):
        f = features[i].view(c, h * w)
        grams.append(torch.mm(f, f.t()) / (h * w * c))
    return torch.stack(grams)


def reference_seconds_per_iteration(model, content_img, style_img, preset, size, iterations):
    """The assignment-style loop; returns seconds per iteration (first excluded)."""
    from pixelrpc.models.style.space import InputSpace, pixels_to_reference, to_pixels

    space = InputSpace.of(model)
    cnn = model.features

    def features_of(z):
        feats, x = [], space.to_model(z)
        for module in cnn:  # every module, every time
            x = module(x)
            feats.append(x)
        return feats

    content_z = pixels_to_reference(to_pixels(content_img, size))
    style_z = pixels_to_reference(to_pixels(style_img, preset.style_size))
    with torch.no_grad():
        content_target = features_of(content_z)[preset.content_layer].clone()
        style_feats = features_of(style_z)
        style_targets = [_gram_loop(style_feats[i].clone()) for i in preset.style_layers]
    img = content_z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([img], lr=3.0)
    times = []
    for t in range(iterations):
        start = time.perf_counter()
        with torch.no_grad():
            img.clamp_(-1.5, 1.5)
        optimizer.zero_grad()
        feats = features_of(img)
        loss = preset.content_weight * (feats[preset.content_layer] - content_target).norm() ** 2
        for i, layer in enumerate(preset.style_layers):
            loss = loss + preset.style_weights[i] * (_gram_loop(feats[layer]) - style_targets[i]).norm() ** 2
        loss = loss + preset.tv_weight * ((img[:, :, 1:, :] - img[:, :, :-1, :]).norm() ** 2
                                          + (img[:, :, :, 1:] - img[:, :, :, :-1]).norm() ** 2)
        loss.backward()
        optimizer.step()
        if t > 0:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


# ---------------------------------------------------------------------- ours
def inprocess_seconds_per_iteration(model, content_img, style_img, preset, size, iterations):
    from pixelrpc.models.style import CAFFE_SQUEEZENET_MULTIPLIERS, style_transfer_steps

    kwargs = dict(preset.kwargs(), image_size=size)
    elapsed = [p.elapsed_s for p in style_transfer_steps(content_img, [style_img], model=model,
                                                         iterations=iterations, seed=0,
                                                         weight_multipliers=CAFFE_SQUEEZENET_MULTIPLIERS,
                                                         **kwargs) if not p.final]
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1)


def grpc_seconds_per_iteration(address, content_bytes, style_bytes, preset, size, iterations):
    from pixelrpc.clients.style import StyleClient, StyleStep

    stamps = []
    with StyleClient(address, timeout=600) as client:
        for event in client.stylize(content_bytes, [style_bytes], preset=preset.name, image_size=size,
                                    iterations=iterations, seed=0):
            if isinstance(event, StyleStep):
                stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="192,384,512")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CI machine has 2 cores)")
    args = parser.parse_args(argv)
    mat = DATA / "sqz_notop.mat"
    if not mat.is_file():
        print(f"skipped: ../shared/data/cs231n absent ({mat} not found)")
        return 0
    torch.set_num_threads(args.threads)
    from pixelrpc.models import zoo
    from pixelrpc.models.registry import ModelCache, Registry
    from pixelrpc.models.style import get_preset
    from pixelrpc.services.settings import Settings
    from pixelrpc.services.style import DEFAULT_MODEL
    from pixelrpc.services.testing import running_server

    preset = get_preset("starry_night")
    content_path, style_path = DATA / "styles" / "tubingen.jpg", DATA / "styles" / "starry_night.jpg"
    content_img, style_img = Image.open(content_path).convert("RGB"), Image.open(style_path).convert("RGB")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"style transfer, starry_night preset on tubingen.jpg, Caffe SqueezeNet 1.1 trunk, "
          f"{args.iterations} iterations per run, torch threads={args.threads}, device=cpu")
    print(f"{'size':>6} {'result':>9} {'in-process s/it':>16} {'gRPC s/it':>10} {'reference s/it':>15} "
          f"{'reference/ours':>15}")
    with tempfile.TemporaryDirectory() as root:
        registry = Registry(root)
        zoo.import_caffe_squeezenet(registry, mat, name=DEFAULT_MODEL)
        model = ModelCache(registry).get(DEFAULT_MODEL).model
        settings = Settings(max_iterations=10_000, torch_threads=args.threads, worker_threads=1)
        with running_server(["style"], settings, registry=registry) as server:
            for size in sizes:
                ours = inprocess_seconds_per_iteration(model, content_img, style_img, preset, size, args.iterations)
                remote = grpc_seconds_per_iteration(server.address, content_path.read_bytes(),
                                                    style_path.read_bytes(), preset, size, args.iterations)
                ref = reference_seconds_per_iteration(model, content_img, style_img, preset, size, args.iterations)
                w, h = content_img.size
                shape = f"{round(w * size / min(w, h))}x{size}"
                print(f"{size:>6} {shape:>9} {ours:>16.4f} {remote:>10.4f} {ref:>15.4f} {ref / ours:>15.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
