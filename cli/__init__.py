"""The ``pixelrpc`` command line, built on the client library (click)."""

from __future__ import annotations

import sys

import click

from pixelrpc.cli.common import CliError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="show tracebacks on errors")
@click.version_option(package_name="pixelrpc", prog_name="pixelrpc")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """PixelRPC: gRPC services for image captioning, network visualization and style transfer."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Each command module exposes register(group). Importing one imports no server code: the local
# commands (serve, train, models bootstrap/import/verify, data) import pixelrpc.services/models when
# they run, so the remote commands work in a client-only install (`pip install pixelrpc`).
from pixelrpc.cli import caption, data, health, models, serve, style, train, visualize  # noqa: E402

for _module in (serve, health, models, caption, train, visualize, style, data):
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

        # A domain error can only come from a local command that imported the server side; a
        # client-only install has no pixelrpc.models to import here.
        domain_errors = sys.modules.get("pixelrpc.models.errors")
        if isinstance(exc, RpcError):
            msg = f"error: {exc.code.name}: {exc.details}"
        elif isinstance(exc, ModuleNotFoundError):  # a local command in a client-only install
            msg = f"error: {exc}: this command runs the server side here: pip install 'pixelrpc[serve]'"
        elif domain_errors is not None and isinstance(exc, domain_errors.PixelRPCError):
            msg = f"error: {exc.message}"
        else:
            msg = f"error: {exc.__class__.__name__}: {exc}"
        click.echo(msg, err=True)
        return 1
    return 0


__all__ = ["CliError", "cli", "main"]
