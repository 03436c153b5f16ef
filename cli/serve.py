"""``pixelrpc serve``: run one service (or all three) in the foreground."""

from __future__ import annotations

import click

from pixelrpc.common.suite import SERVICES

DEFAULT_PORTS = {name: spec.port for name, spec in SERVICES.items()}


@click.command("serve")
@click.argument("service", type=click.Choice([*SERVICES, "all"]))
@click.option("--host", default=None, help="bind address (env PIXELRPC_HOST, default 127.0.0.1)")
@click.option("--port", type=int, default=None,
              help=f"port (env PIXELRPC_PORT; defaults {DEFAULT_PORTS}); not with 'all'")
@click.option("--registry", default=None, help="registry folder (env PIXELRPC_REGISTRY)")
@click.option("--metrics-port", type=int, default=None, help="Prometheus port (0 disables)")
@click.option("--http-port", type=int, default=None,
              help="HTTP port: KServe V2 REST + JSON API (env PIXELRPC_HTTP_PORT; defaults 8081/8082/8083; "
                   "-1 disables, 0 picks a free port); not with 'all'")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--workers", "worker_threads", type=int, default=None, help="executor threads")
@click.option("--queue-depth", type=int, default=None)
@click.option("--max-concurrency", type=int, default=None)
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.option("--log-level", default=None)
@click.option("--preload", default=None, help="comma-separated NAME[:V] to load and warm before SERVING")
def serve_command(service, host, port, registry, metrics_port, http_port, device, worker_threads, queue_depth,
                  max_concurrency, log_format, log_level, preload):
    """Run SERVICE (one of the suite's services, or all of them in one process)."""
    import os

    from pixelrpc.services.server import run
    from pixelrpc.services.settings import Settings

    if service == "all" and http_port is not None:
        raise click.UsageError("--http-port applies to one service; use PIXELRPC_<SERVICE>_HTTP_PORT with 'all'")
    if service == "all" and port is not None:
        raise click.UsageError("--port applies to one service; use PIXELRPC_<SERVICE>_PORT with 'all'")
    names = tuple(SERVICES) if service == "all" else (service,)
    env = dict(os.environ)
    if service == "all":
        env.pop("PIXELRPC_PORT", None)
        env.pop("PIXELRPC_METRICS_PORT", None)
        if env.get("PIXELRPC_HTTP_PORT") != "-1":  # -1 (off) applies to all; a port to one
            env.pop("PIXELRPC_HTTP_PORT", None)
    plans = []
    for name in names:
        settings = Settings.from_env(env, service=name, host=host, port=port, registry=registry,
                                     metrics_port=metrics_port, http_port=http_port, device=device, worker_threads=worker_threads,
                                     queue_depth=queue_depth, max_concurrency=max_concurrency,
                                     log_format=log_format, log_level=log_level, preload=preload)
        plans.append((name, settings))
    raise SystemExit(run(plans))


def register(group: click.Group) -> None:
    group.add_command(serve_command)
