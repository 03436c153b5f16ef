"""Style transfer against the CS231n assignment's loop on the same Caffe SqueezeNet 1.1 trunk.

The reference is ``pixelrpc.models.style.notebook.notebook_style_transfer``: the notebook's loop as
the notebook writes it (every module each step, ``bmm`` Gram, sums of squares, ``loss.backward()``,
Adam 3.0 then 0.1, float32) with the notebook's weights (the starry_night preset as it is). PixelRPC
is ``style_transfer_steps`` with its defaults (the model's multipliers, ``precision="auto"``).
Reference and PixelRPC runs alternate; each figure is the median of ``--repeats`` (>= 3) runs.
Rows (bench/results.py):

1. s/iter at 512 px (shorter side), one torch thread: reference / PixelRPC >= 2;
2. 200 iterations at 192 px through gRPC (a ``pixelrpc serve style`` process, one torch thread,
   client wall time from request to result) / in process: <= 1.15;
3. L-BFGS (``optimizer="lbfgs"``): function evaluations to reach the final loss of PixelRPC's Adam
   loop (200 evaluations) on the same objective: fewer;
4. style distance (``notebook.style_distance``: mean relative Gram distance to the style at the style
   layers, measured on the delivered images) of PixelRPC's default preset vs the notebook's, 192 px,
   200 iterations: <= 1, and PixelRPC's wall time <= the notebook's (printed);
5. the style server's RSS after a 512 px job (20 iterations: the peak is the first) <= its idle RSS + 150 MiB.

    python bench/style.py [--repeats 3] [--threads 1] [--smoke]

``--smoke`` (``make test``): tiny sizes and iteration counts, one repeat; prints the same rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from procfs import rss_mib
from results import record

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "cs231n"
MODEL = "squeezenet1_1-caffe"


def pixelrpc_run(model, content, style, preset, **overrides):
    """(final image, wall s, per-step seconds, (total, evaluations) per step, final total) of
    ``style_transfer_steps``. A step's total is that of the point it started from."""
    from pixelrpc.models.style import style_transfer_steps
    from pixelrpc.models.style.presets import multipliers_for

    kwargs = dict(preset.kwargs(), seed=0, weight_multipliers=multipliers_for(model.metadata), **overrides)
    start = time.perf_counter()
    stamps, totals, final = [start], [], None
    for p in style_transfer_steps(content, [style], model=model.model, **kwargs):
        if p.final:
            final = p
        else:
            stamps.append(time.perf_counter())
            totals.append((p.total_loss, p.evaluations))
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return final.image, time.perf_counter() - start, steps, totals, final.total_loss


def grpc_run(address, content_bytes, style_bytes, preset, size, iterations):
    from pixelrpc.clients.style import StyleClient

    start = time.perf_counter()
    with StyleClient(address, timeout=600) as client:
        for _ in client.stylize(content_bytes, [style_bytes], preset=preset.name, image_size=size,
                                iterations=iterations, seed=0):
            pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (make test)")
    args = parser.parse_args(argv)
    mat = DATA / "sqz_notop.mat"
    if not mat.is_file():
        print(f"skipped: ../shared/data/cs231n absent ({mat} not found)")
        return 0
    torch.set_num_threads(args.threads)
    from pixelrpc.cli.launcher import start_suite
    from pixelrpc.models import zoo
    from pixelrpc.models.registry import ModelCache, Registry
    from pixelrpc.models.style import get_preset
    from pixelrpc.models.style.notebook import notebook_style_transfer, style_distance
    from pixelrpc.models.style.transfer import native_bf16

    repeats = 1 if args.smoke else max(3, args.repeats)
    big, small, iters = (48, 32, 12) if args.smoke else (512, 192, 200)
    big_iters = 4 if args.smoke else 6
    preset = get_preset("starry_night")
    content_path, style_path = DATA / "styles" / "tubingen.jpg", DATA / "styles" / "starry_night.jpg"
    content, style = Image.open(content_path).convert("RGB"), Image.open(style_path).convert("RGB")
    nb_kwargs = dict(preset.kwargs(), style_size=min(preset.style_size, small))
    print(f"style transfer, starry_night preset on tubingen.jpg, Caffe SqueezeNet 1.1 trunk, torch threads="
          f"{args.threads}, repeats={repeats}, native bf16={native_bf16()}")
    with tempfile.TemporaryDirectory() as root:
        registry = Registry(root)
        zoo.import_caffe_squeezenet(registry, mat, name=MODEL)
        loaded = ModelCache(registry).get(MODEL)

        class Loaded:  # what pixelrpc_run needs
            model, metadata = loaded.model, loaded.manifest.metadata

        # 1. s/iter at 512 px, interleaved; the first step of each run excluded
        ref_t, our_t = [], []
        for _ in range(repeats):
            run = notebook_style_transfer(loaded.model, content, style, **dict(nb_kwargs, image_size=big),
                                          iterations=big_iters)
            ref_t.append(statistics.median(run.step_seconds[1:]))
            _, _, steps, _, _ = pixelrpc_run(Loaded, content, style, preset, image_size=big,
                                             style_size=nb_kwargs["style_size"], iterations=big_iters)
            our_t.append(statistics.median(steps[1:]))
        ref, ours = statistics.median(ref_t), statistics.median(our_t)
        record(f"style s/iter, {big} px, {args.threads} thread", "assignment loop, same trunk", ref, ours, "s/iter",
               ref / ours, ">= 2")

        # 4. style distance and wall time at 192 px, 200 iterations, interleaved
        ref_d, our_d, ref_w, our_w, adam_final = [], [], [], [], []
        dist_args = (style, nb_kwargs["style_size"], preset.style_layers)
        for _ in range(repeats):
            run = notebook_style_transfer(loaded.model, content, style, **dict(nb_kwargs, image_size=small),
                                          iterations=iters, decay_lr_at=int(iters * 0.9))
            ref_d.append(style_distance(loaded.model, run.image, *dist_args))
            ref_w.append(run.wall_s)
            image, wall, _, _, final = pixelrpc_run(Loaded, content, style, preset, image_size=small,
                                                    style_size=nb_kwargs["style_size"], iterations=iters,
                                                    decay_at=int(iters * 0.9))
            our_d.append(style_distance(loaded.model, image, *dist_args))
            our_w.append(wall)
            adam_final.append(final)
        print(f"  wall time of {iters} iterations at {small} px: assignment loop {statistics.median(ref_w):.2f} s, "
              f"PixelRPC {statistics.median(our_w):.2f} s")
        ref, ours = statistics.median(ref_d), statistics.median(our_d)
        record(f"style distance, {small} px, {iters} iterations", "assignment loop, notebook weights", ref, ours,
               "rel. Gram distance", ours / ref, "<= 1")
        record(f"style wall time, {small} px, {iters} iterations", "assignment loop, notebook weights",
               statistics.median(ref_w), statistics.median(our_w), "s", statistics.median(our_w) /
               statistics.median(ref_w), "<= 1")

        # 3. L-BFGS evaluations to reach the Adam loop's final loss (deterministic: one run)
        target = statistics.median(adam_final)
        _, _, _, totals, _ = pixelrpc_run(Loaded, content, style, preset, image_size=small,
                                          style_size=nb_kwargs["style_size"], iterations=iters // 2,
                                          optimizer="lbfgs")
        # the first step that starts from a point at or under the target: that point was the step
        # before's last evaluation (the initial image: evaluation 1)
        before = [0] + [n for _, n in totals]
        evals = next((max(1, before[i]) for i, (v, _) in enumerate(totals) if v <= target), float("inf"))
        record(f"L-BFGS evaluations to Adam's final loss, {small} px", f"Adam, {iters} evaluations",
               iters, evals, "evaluations", evals / iters, "< 1")

        # 2 and 5. a style server process: gRPC vs in process; RSS after a 512 px job
        with tempfile.TemporaryDirectory() as logs:
            suite = start_suite(root, logs, services=("style",),
                                extra_env={"PIXELRPC_TORCH_THREADS": str(args.threads),
                                           "OMP_NUM_THREADS": str(args.threads)})
            with suite:
                suite.wait_healthy()
                address, pid = suite.address("style"), suite.services["style"].process.pid
                cb, sb = content_path.read_bytes(), style_path.read_bytes()
                grpc_run(address, cb, sb, preset, 32, 2)  # first call: channel, model load
                time.sleep(0.5)
                idle = rss_mib(pid)
                remote, local = [], []
                for _ in range(repeats):
                    remote.append(grpc_run(address, cb, sb, preset, small, iters))
                    local.append(pixelrpc_run(Loaded, content, style, preset, image_size=small,
                                              iterations=iters)[1])
                ref, ours = statistics.median(local), statistics.median(remote)
                record(f"style {iters} iterations at {small} px over gRPC", "in process", ref, ours, "s",
                       ours / ref, "<= 1.15")
                rss_iters = 4 if args.smoke else 20  # the peak is reached on the first step
                grpc_run(address, cb, sb, preset, big, rss_iters)
                time.sleep(0.5)
                after = rss_mib(pid)
                record(f"style server RSS after a {big} px job ({rss_iters} iterations)", f"idle RSS {idle:.0f} MiB + 150 MiB",
                       idle + 150, after, "MiB", after / (idle + 150), "<= 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
