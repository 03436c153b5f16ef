"""``pixelrpc data shapes``: write the generated shapes world in the CS231n COCO captioning layout.

The folder it writes is what ``pixelrpc features extract`` and ``pixelrpc train captioner --data`` read,
exactly as for the real COCO files, so one set of commands serves both.
"""

from __future__ import annotations

from pathlib import Path

import click

from pixelrpc.cli.common import emit_json, json_option, progress


@click.command("shapes")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(min=1), default=4000, show_default=True,
              help="training images")
@click.option("--val", "n_val", type=click.IntRange(min=0), default=1000, show_default=True,
              help="validation images")
@click.option("--seed", type=int, default=0, show_default=True, help="train and val come from its own streams")
@click.option("--size", type=int, default=64, show_default=True, help="image side in pixels")
@json_option
def shapes_command(out: Path, n_train: int, n_val: int, seed: int, size: int, as_json: bool) -> None:
    """Write --train + --val generated scenes into OUT (a new or empty folder), in the COCO layout.

    OUT gets coco2014_captions.h5, coco2014_vocab.json, train2014/ and val2014/ PNGs with their
    *_urls.txt, per-object masks (*_masks.npz) and shapes.json. Features come next:

      pixelrpc features extract --encoder shapes-squeezenet --images OUT/train2014 --out OUT/train2014_vgg16_fc7.h5
    """
    from pixelrpc.models.data import shapes

    with progress(n_train + n_val, "scenes", enabled=not as_json) as bar:
        dataset = shapes.write_coco_layout(out, n_train, n_val, seed=seed, size=size,
                                           progress=lambda written: bar.update(written - bar.n))
    summary = {
        "root": str(dataset.root), "n_train": dataset.n_train, "n_val": dataset.n_val,
        "n_train_captions": dataset.n_train_captions, "n_val_captions": dataset.n_val_captions,
        "vocab_size": dataset.vocab_size, "size": dataset.size, "seed": dataset.seed,
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote {dataset.n_train} train and {dataset.n_val} val scenes ({dataset.size} px; "
               f"{dataset.n_train_captions} + {dataset.n_val_captions} captions, vocabulary of "
               f"{dataset.vocab_size} words) to {dataset.root}")


def register(group: click.Group) -> None:
    data = click.Group("data", help="Generate data sets.")
    data.add_command(shapes_command)
    group.add_command(data)
