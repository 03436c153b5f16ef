"""``pixelrpc models import squeezenet1_1 | squeezenet1_1-caffe``: SqueezeNet 1.1 weights into the registry."""

from __future__ import annotations

from pathlib import Path

import click

from pixelrpc.cli.common import CliError, emit_json, json_option


def _registry_option():
    return click.option("--registry", default=None, metavar="DIR",
                        help="registry folder (env PIXELRPC_REGISTRY, default ~/.cache/pixelrpc/registry)")


def _report(manifest, as_json: bool) -> None:
    summary = {"model": manifest.ref, "sha256": manifest.sha256, "tasks": list(manifest.tasks),
               "architecture": manifest.architecture, "num_classes": manifest.metadata.get("num_classes"),
               "num_parameters": manifest.metadata.get("num_parameters")}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"imported {manifest.ref} ({summary['architecture']}, {summary['num_parameters']:,} parameters, "
                   f"tasks {', '.join(manifest.tasks)}) sha256 {manifest.sha256[:12]}")


@click.command("squeezenet1_1")
@click.option("--torchvision-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="torchvision's state dict (squeezenet1_1-b8a52dc0.pth)")
@click.option("--from-torchvision", is_flag=True,
              help="download that file through torchvision (needs the network; the only command that uses it)")
@click.option("--class-names", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="text file, one class name per line (default: the ImageNet names for 1000 classes)")
@click.option("--name", default="squeezenet1_1", show_default=True, help="registry name")
@_registry_option()
@json_option
def squeezenet_command(torchvision_weights, from_torchvision, class_names, name, registry, as_json):
    """Import torchvision's ImageNet SqueezeNet 1.1 as a classification model."""
    from pixelrpc.models.registry import Registry
    from pixelrpc.models.zoo import download_torchvision_squeezenet, import_torchvision_squeezenet

    if bool(torchvision_weights) == bool(from_torchvision):
        raise CliError("give exactly one of --torchvision-weights FILE.pth or --from-torchvision")
    path = torchvision_weights or download_torchvision_squeezenet()
    names = None
    if class_names is not None:
        names = [line.strip() for line in class_names.read_text().splitlines() if line.strip()]
    _report(import_torchvision_squeezenet(Registry(registry), path, name=name, class_names=names), as_json)


@click.command("squeezenet1_1-caffe")
@click.option("--caffe-mat", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="the Caffe SqueezeNet 1.1 trunk as .mat (layout of sqz_notop.mat)")
@click.option("--name", default="squeezenet1_1-caffe", show_default=True, help="registry name")
@_registry_option()
@json_option
def squeezenet_caffe_command(caffe_mat, name, registry, as_json):
    """Import the Caffe SqueezeNet 1.1 convolutional trunk as a feature-extraction model (no classifier)."""
    from pixelrpc.models.registry import Registry
    from pixelrpc.models.zoo import import_caffe_squeezenet

    _report(import_caffe_squeezenet(Registry(registry), caffe_mat, name=name), as_json)


def register_import(import_group: click.Group) -> None:
    import_group.add_command(squeezenet_command)
    import_group.add_command(squeezenet_caffe_command)
