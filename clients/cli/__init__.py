"""The ``pixelrpc`` command line, built on the client library (click)."""

from __future__ import annotations

import importlib
import sys

import click

from pixelrpc.clients.cli.common import CliError

# Each module exposes register(group). Service issues add their command modules here.
COMMAND_MODULES = [
    "pixelrpc.clients.cli.serve",
    "pixelrpc.clients.cli.health",
    "pixelrpc.clients.cli.models",
    "pixelrpc.clients.cli.caption",
    "pixelrpc.clients.cli.train",
    "pixelrpc.clients.cli.visualize",
    "pixelrpc.clients.cli.style",
    "pixelrpc.clients.cli.data",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="show tracebacks on errors")
@click.version_option(package_name="pixelrpc", prog_name="pixelrpc")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """PixelRPC: gRPC services for image captioning, network visualization and style transfer."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:
            raise
        continue
    _module.register(cli)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors and a non-zero exit, tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="pixelrpc", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if debug:
            raise
        from pixelrpc.clients.errors import RpcError
        from pixelrpc.models.errors import PixelRPCError

        if isinstance(exc, RpcError):
            msg = f"error: {exc.code.name}: {exc.details}"
        elif isinstance(exc, PixelRPCError):
            msg = f"error: {exc.message}"
        else:
            msg = f"error: {exc.__class__.__name__}: {exc}"
        click.echo(msg, err=True)
        return 1
    return 0


__all__ = ["CliError", "cli", "main"]
