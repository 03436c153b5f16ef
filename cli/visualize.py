"""``pixelrpc classify | saliency | fool | dream``: the VisualizationService from the command line."""

from __future__ import annotations

import io
from pathlib import Path

import click

from pixelrpc.cli.common import (
    CliError,
    addr_option,
    connect,
    emit_json,
    json_option,
    progress,
    timeout_option,
)

SERVICE = "visualization"
image_path = click.Path(exists=True, dir_okay=False, path_type=Path)
model_option = click.option("--model", default=None, metavar="NAME[:VERSION]",
                            help="classifier from the registry (default: chosen by the server, see README)")


def _meta(meta) -> dict:
    return {"request_id": meta.request_id, "model": f"{meta.model_name}:{meta.model_version}",
            "model_sha256": meta.model_sha256, "seed": meta.seed, "compute_ms": round(meta.compute_ms, 2),
            "queue_ms": round(meta.queue_ms, 2)}


def _write_image(image_pb, path: Path) -> None:
    """Write a PNG Image message to ``path``; other suffixes (.jpg, .webp) are converted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        path.write_bytes(image_pb.data)
        return
    from PIL import Image

    try:
        Image.open(io.BytesIO(image_pb.data)).convert("RGB").save(path)
    except (ValueError, KeyError) as exc:
        raise CliError(f"cannot write {path}: unknown image format {path.suffix!r} ({exc})") from None


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=image_path)
@model_option
@click.option("--top-k", type=click.IntRange(1, 1000), default=None, help="classes per image [server default]")
@addr_option(SERVICE)
@json_option
@timeout_option
def classify_command(images, model, top_k, addr, as_json, timeout):
    """Top classes of each IMAGE (any size; resized to the model's input)."""
    with connect(SERVICE, addr, timeout) as client:
        response = client.classify(list(images), model=model, top_k=top_k or 0)
    rows = [{"image": str(path), "predictions": [
        {"class": p.class_index, "label": p.label, "probability": round(p.probability, 6)} for p in r.predictions]}
        for path, r in zip(images, response.results, strict=True)]
    if as_json:
        emit_json({"results": rows, "input_size": response.input_size, "meta": _meta(response.meta)})
        return
    for row in rows:
        click.echo(row["image"])
        for p in row["predictions"]:
            click.echo(f"  {p['probability']:7.2%}  {p['class']:>4}  {p['label']}")


@click.command("saliency")
@click.argument("image", type=image_path)
@click.option("--class", "target_class", type=click.IntRange(min=0), default=None, help="class index to explain")
@click.option("--label", type=click.Choice(["auto"]), default=None, help="'auto': explain the predicted class")
@click.option("--method", type=click.Choice(["vanilla", "smoothgrad", "integrated-gradients"]), default="vanilla",
              show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=0, help="SmoothGrad samples (0: the server's default)")
@click.option("--noise-level", type=float, default=None, help="SmoothGrad noise level [server default]")
@click.option("--seed", type=int, default=None, help="SmoothGrad seed")
@click.option("--steps", type=click.IntRange(min=0), default=0, help="Integrated Gradients steps (0: the server's default)")
@click.option("--baseline", type=click.Choice(["black", "mean"]), default="black", show_default=True,
              help="Integrated Gradients baseline")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the saliency overlaid on the image (PNG)")
@click.option("--heatmap", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the bare heatmap here")
@click.option("--npy", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the raw map (float32 H x W) as .npy")
@model_option
@addr_option(SERVICE)
@json_option
@timeout_option
def saliency_command(image, target_class, label, method, samples, noise_level, seed, steps, baseline, output,
                     heatmap, npy, model, addr, as_json, timeout):
    """Which pixels of IMAGE matter for a class: --class C, or --label auto for the predicted one."""
    if (target_class is None) == (label is None):
        raise CliError("give exactly one of --class C or --label auto")
    with connect(SERVICE, addr, timeout) as client:
        response = client.saliency(image, target_class=target_class, method=method.replace("-", "_"),
                                   model=model, noise_level=noise_level, samples=samples, seed=seed, steps=steps,
                                   baseline=baseline, render_images=True)
    _write_image(response.overlay, output)
    if heatmap is not None:
        _write_image(response.heatmap, heatmap)
    if npy is not None:
        import numpy as np

        from pixelrpc.clients.visualization import to_numpy

        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, to_numpy(response.saliency))
    summary = {"output": str(output), "class": response.target_class, "label": response.target_label,
               "predicted_class": response.predicted_class, "score": response.target_score,
               "method": method, "input_size": response.input_size, "meta": _meta(response.meta)}
    if method == "integrated-gradients":
        summary["completeness_gap"] = response.completeness_gap
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{method} saliency of class {response.target_class} ({response.target_label}) -> {output}")


@click.command("fool")
@click.argument("image", type=image_path)
@click.option("--target-class", type=click.IntRange(min=0), required=True, help="class the image should become")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the fooling image (PNG)")
@click.option("--comparison", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write original | fooling image | magnified difference here")
@click.option("--max-iterations", type=click.IntRange(min=0), default=None, help="[server default]")
@click.option("--learning-rate", type=float, default=None, help="[server default]")
@model_option
@addr_option(SERVICE)
@json_option
@timeout_option
def fool_command(image, target_class, output, comparison, max_iterations, learning_rate, model, addr, as_json,
                 timeout):
    """Nudge IMAGE until the model calls it --target-class (gradient ascent, streamed)."""
    with connect(SERVICE, addr, timeout) as client, progress(max_iterations or None, "fooling", not as_json) as bar:
        def on_progress(p):
            bar.update(1)
            bar.set_postfix(p_target=f"{p.target_probability:.3f}", predicted=p.predicted_class)

        response = client.fooling_image(image, target_class, model=model, learning_rate=learning_rate or 0.0,
                                        max_iterations=max_iterations or 0, on_progress=on_progress)
    r = response.result
    _write_image(r.image, output)
    if comparison is not None:
        _write_image(r.comparison, comparison)
    summary = {"output": str(output), "succeeded": r.succeeded, "png_succeeded": r.png_succeeded,
               "iterations": r.iterations, "original": {"class": r.original_class, "label": r.original_label},
               "predicted": {"class": r.predicted_class, "label": r.predicted_label},
               "target_probability": r.target_probability, "l2": r.l2, "linf": r.linf,
               "relative_l2": r.relative_l2, "input_size": r.input_size, "meta": _meta(response.meta)}
    if as_json:
        emit_json(summary)
        return
    verdict = "fooled" if r.succeeded else f"NOT fooled after {r.iterations} iterations"
    click.echo(f"{verdict}: {r.original_label} -> {r.predicted_label} in {r.iterations} steps, "
               f"L2 {r.l2:.4f} ({r.relative_l2:.2%} of the image), Linf {r.linf:.4f} -> {output}")
    if r.succeeded and not r.png_succeeded:
        click.echo("note: the 8-bit PNG no longer fools the model (rounding undid the change); "
                   "use a few more iterations", err=True)


@click.command("dream")
@click.option("--class", "target_class", type=click.IntRange(min=0), required=True, help="class to visualise")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
# Unset options take the server's defaults (ClassVisualizationOptions in pixelrpc.models.visualization.options).
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="[server default]")
@click.option("--learning-rate", type=float, default=None, help="[server default]")
@click.option("--l2-reg", type=float, default=None, help="[server default]")
@click.option("--blur-every", type=click.IntRange(min=0), default=None, help="0: never [server default]")
@click.option("--max-jitter", type=click.IntRange(min=0), default=None, help="[server default, at most size / 4]")
@click.option("--show-every", type=click.IntRange(min=1), default=None, help="[server default]")
@click.option("--seed", type=int, default=None)
@click.option("--size", type=click.IntRange(min=0), default=0, help="image side (0: the model's input size)")
@click.option("--previews", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write the preview images into this folder")
@model_option
@addr_option(SERVICE)
@json_option
@timeout_option
def dream_command(target_class, output, iterations, learning_rate, l2_reg, blur_every, max_jitter, show_every,
                  seed, size, previews, model, addr, as_json, timeout):
    """Generate an image the model takes for --class (class visualization, streamed)."""
    with connect(SERVICE, addr, timeout) as client, progress(iterations, "dreaming", not as_json) as bar:
        def on_progress(p):
            bar.update(1)
            bar.set_postfix(p_target=f"{p.target_probability:.3f}")
            if previews is not None and p.HasField("preview"):
                _write_image(p.preview, previews / f"iteration-{p.iteration:05d}.png")

        response = client.class_visualization(
            target_class, model=model, num_iterations=iterations or 0, learning_rate=learning_rate or 0.0,
            l2_reg=l2_reg, blur_every=blur_every, max_jitter=max_jitter, show_every=show_every or 0, seed=seed,
            size=size,
            on_progress=on_progress)
    r = response.result
    _write_image(r.image, output)
    summary = {"output": str(output), "class": r.target_class, "label": r.target_label,
               "target_probability": r.target_probability, "target_score": r.target_score,
               "iterations": r.iterations, "size": r.size, "meta": _meta(response.meta)}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"class {r.target_class} ({r.target_label}): p={r.target_probability:.3f} after "
                   f"{r.iterations} iterations (seed {response.meta.seed}) -> {output}")


def register(group: click.Group) -> None:
    for command in (classify_command, saliency_command, fool_command, dream_command):
        group.add_command(command)
