"""``pixelrpc style``: stylise an image through the StyleTransferService, with a progress bar."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click

from pixelrpc.cli.common import CliError, addr_option, connect, emit_json, json_option, progress

PRESET_NAMES = ("composition_vii", "the_scream", "starry_night")


def _floats(text: str | None, what: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str | None, what: str) -> list[int] | None:
    values = _floats(text, what)
    if values is None:
        return None
    if any(v != int(v) for v in values):
        raise CliError(f"{what} must be comma-separated integers, got {text!r}")
    return [int(v) for v in values]


@click.command("style")
@click.argument("content", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("styles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="where to write the PNG result")
@click.option("--style-weights", default=None, metavar="W1,W2,...",
              help="blend of the style images, one number each (default: equal)")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="start from one of the assignment's parameter sets [server default]")
@click.option("--size", "image_size", type=int, default=None, help="shorter side of the result [preset]")
@click.option("--style-size", type=int, default=None, help="shorter side of the style images [preset]")
@click.option("--iterations", type=int, default=None, help="Adam steps [server default]")
@click.option("--init", type=click.Choice(["content", "random"]), default=None,
              help="start from the content image or from noise [server default]")
@click.option("--preserve-color", is_flag=True, help="transfer luminance only; keep the content's colours")
@click.option("--content-weight", type=float, default=None, help="[preset]; 0 with --init random: texture")
@click.option("--style-layers", default=None, metavar="L1,L2,...", help="style layer indices [preset]")
@click.option("--layer-weights", default=None, metavar="W1,W2,...", help="one style weight per style layer")
@click.option("--tv-weight", type=float, default=None, help="total-variation weight [preset]")
@click.option("--model", default="", metavar="NAME[:VERSION]", help="feature network (default: the server's)")
@click.option("--seed", type=int, default=None, help="seed of the random initialisation")
@click.option("--unary", is_flag=True, help="call StylizeUnary: no stream, no progress")
@click.option("--previews", "previews_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="save preview PNGs into this folder")
@click.option("--preview-every", type=int, default=20, show_default=True, help="with --previews")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="call deadline in seconds")
@addr_option("style")
@json_option
def style_command(content, styles, output, style_weights, preset, image_size, style_size, iterations, init,
                  preserve_color, content_weight, style_layers, layer_weights, tv_weight, model, seed, unary,
                  previews_dir, preview_every, timeout, addr, as_json):
    """Stylise CONTENT after one or more STYLE images (Gatys et al.; CS231n 2017 assignment 3)."""
    from pixelrpc.clients.style import StyleOutput

    blend = _floats(style_weights, "--style-weights")
    if blend is not None and len(blend) != len(styles):
        raise CliError(f"--style-weights has {len(blend)} numbers for {len(styles)} style images")
    if previews_dir is not None and unary:
        raise CliError("--previews needs the stream; drop --unary")
    if previews_dir is not None and preview_every < 1:
        raise CliError("--preview-every must be >= 1")
    job = dict(style_weights=blend, preset=preset or "", model=model, seed=seed, init=init,
               preserve_color=preserve_color, style_layers=_ints(style_layers, "--style-layers"),
               layer_weights=_floats(layer_weights, "--layer-weights"), image_size=image_size,
               style_size=style_size, iterations=iterations, content_weight=content_weight, tv_weight=tv_weight)
    with connect("style", addr, timeout) as client:
        if unary:
            result = client.stylize_unary(content, list(styles), **job)
        else:
            if previews_dir is not None:
                previews_dir.mkdir(parents=True, exist_ok=True)
            result = None
            with ExitStack() as stack:
                bar = None  # opened on the first progress message, so an early error prints no empty bar
                for event in client.stylize(content, list(styles),
                                            preview_every=preview_every if previews_dir else 0, **job):
                    if isinstance(event, StyleOutput):
                        result = event
                        continue
                    if bar is None:
                        bar = stack.enter_context(progress(event.iterations, "style", enabled=not as_json))
                    bar.update(event.iteration - bar.n)
                    bar.set_postfix(loss=f"{event.losses.total:.4g}", style=f"{event.losses.style:.3g}",
                                    content=f"{event.losses.content:.3g}")
                    if previews_dir is not None and event.preview_png:
                        (previews_dir / f"preview_{event.iteration:05d}.png").write_bytes(event.preview_png)
            if result is None:
                raise CliError("the stream ended without a result")
    output.parent.mkdir(parents=True, exist_ok=True)
    result.save(output)
    summary = {"output": str(output), "width": result.width, "height": result.height,
               "losses": vars(result.losses), "seed": result.meta.seed, "model": result.meta.model_name,
               "model_version": result.meta.model_version, "compute_ms": round(result.meta.compute_ms, 1),
               "request_id": result.meta.request_id}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {output} ({result.width}x{result.height}); loss {result.losses.total:.4g} "
                   f"(content {result.losses.content:.3g}, style {result.losses.style:.3g}, "
                   f"tv {result.losses.tv:.3g}); seed {result.meta.seed}; model "
                   f"{result.meta.model_name}:{result.meta.model_version}")


def register(group: click.Group) -> None:
    group.add_command(style_command)
