"""Shared CLI plumbing: addresses, JSON output, progress bars and one-line errors."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import click

from pixelrpc.clients.base import TLSConfig
from pixelrpc.common.suite import service as service_spec


class CliError(click.ClickException):
    """An error shown as one line (no traceback unless --debug)."""


def addr_option(service: str):
    spec = service_spec(service)
    return click.option("--addr", "addr", default=None, metavar="HOST:PORT",
                        help=f"address of the {service} service (default: ${spec.address_env} or "
                             f"{spec.default_address}); several, comma-separated, are balanced")


json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
timeout_option = click.option("--timeout", type=float, default=None, help="call deadline in seconds")


def resolve_addr(service: str, addr: str | None) -> str:
    spec = service_spec(service)
    return addr or os.environ.get(spec.address_env) or spec.default_address


def client_kwargs(timeout: float | None = None) -> dict:
    """Token from ``PIXELRPC_AUTH_TOKEN``; TLS from ``PIXELRPC_TLS_CA``, ``PIXELRPC_TLS_CLIENT_CERT``,
    ``PIXELRPC_TLS_CLIENT_KEY`` and ``PIXELRPC_TLS_SERVER_NAME`` (``TLSConfig.from_env``)."""
    try:
        tls = TLSConfig.from_env()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    kw = {"token": os.environ.get("PIXELRPC_AUTH_TOKEN") or None, "tls": tls}
    if timeout is not None:
        kw["timeout"] = timeout
    return kw


def connect(service: str, addr: str | None, timeout: float | None = None):
    """A typed sync client for ``service``, configured from flags and the environment."""
    return service_spec(service).client_class()(resolve_addr(service, addr), **client_kwargs(timeout))


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@contextmanager
def progress(total: int | None, desc: str, enabled: bool = True):
    """A tqdm bar on stderr (so --json output on stdout stays clean)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True, leave=True)
    try:
        yield bar
    finally:
        bar.close()
