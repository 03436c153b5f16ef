"""``pixelrpc health``: the standard gRPC health check, for humans and container health checks."""

from __future__ import annotations

import click

from pixelrpc.cli.common import CliError, emit_json, json_option
from pixelrpc.common.suite import SERVICES


@click.command("health")
@click.option("--addr", "addrs", multiple=True, metavar="HOST:PORT",
              help="server to check (repeatable; default: every service's address)")
@click.option("--service", default="", help="service name to check ('' = the whole server)")
@click.option("--timeout", type=float, default=5.0)
@json_option
def health_command(addrs, service, timeout, as_json):
    """Check that servers answer SERVING; exit 1 otherwise."""
    from pixelrpc.cli.common import client_kwargs, resolve_addr
    from pixelrpc.clients.base import ServiceClient
    from pixelrpc.clients.errors import RpcError

    targets = list(addrs) or [resolve_addr(s, None) for s in SERVICES]
    results, ok = {}, True
    for target in targets:
        with ServiceClient(target, **client_kwargs(timeout)) as c:
            try:
                status = c.health(service, timeout=timeout)
            except RpcError as exc:
                status = f"{exc.code.name}: {exc.details}"
        results[target] = status
        ok = ok and status == "SERVING"
    if as_json:
        emit_json(results)
    else:
        for target, status in results.items():
            click.echo(f"{target}\t{status}")
    if not ok:
        raise CliError("not every server is SERVING")


def register(group: click.Group) -> None:
    group.add_command(health_command)
