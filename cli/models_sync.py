"""``pixelrpc models sync SRC DEST``: copy a registry from any fsspec URL, verifying every sha256.

The init container of a Kubernetes pod runs it to fill the pod's own registry (an ``emptyDir``)
before the server starts (docs/kubernetes.md); the domain code is ``pixelrpc.models.registry.sync``.
"""

from __future__ import annotations

import click

from pixelrpc.cli.common import CliError, emit_json, json_option


def _options(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        out[key] = value
    return out


@click.command("sync")
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--only", "names", multiple=True, metavar="NAME", help="copy only this model (repeatable)")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option for SOURCE (repeatable), e.g. anon=true, endpoint_url=...")
@json_option
def sync_command(source, dest, names, options, as_json):
    """Copy every model version of SOURCE (a path, memory://, s3://, gs://) into the folder DEST.

    Every manifest must be sealed and every file must match its sha256; one mismatch refuses the
    whole sync and leaves DEST as it was. DEST/.pixelrpc-sync.json appears only when all of it
    verified. Versions DEST already holds with identical, verified content are kept.
    """
    from pixelrpc.models.errors import PixelRPCError
    from pixelrpc.models.registry.sync import sync_registry

    try:
        report = sync_registry(source, dest, names=names, storage_options=_options(options),
                               progress=None if as_json else lambda m: click.echo(m, err=True))
    except PixelRPCError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"synced {source} -> {dest}: {len(report.copied)} copied, {len(report.unchanged)} unchanged, "
               f"{report.bytes_copied} bytes; every sha256 verified")


def register_models(models_group: click.Group) -> None:
    """Add ``sync`` to ``pixelrpc models``."""
    models_group.add_command(sync_command)
