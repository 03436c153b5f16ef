"""``pixelrpc models``: list, show, verify, remove and import models of the registry."""

from __future__ import annotations

import importlib

import click

from pixelrpc.clients.cli.common import CliError, emit_json, json_option

# Modules that add sources to ``models import`` (register_import(group)) and other model commands
# (register_models(group)); each service issue adds its own.
IMPORT_MODULES = ["pixelrpc.clients.cli.models_import"]
EXTRA_MODULES = ["pixelrpc.clients.cli.bootstrap"]

registry_option = click.option("--registry", default=None, metavar="DIR",
                               help="registry folder (env PIXELRPC_REGISTRY, default ~/.cache/pixelrpc/registry)")


def open_registry(path: str | None):
    from pixelrpc.models.registry import Registry

    return Registry(path)


def manifest_json(m) -> dict:
    data = m.to_json()
    data["sha256"] = m.sha256
    data.pop("schema", None)
    return data


@click.group("models")
def models_group():
    """Manage the model registry (local folder, or a running service with --addr)."""


@models_group.command("list")
@registry_option
@click.option("--addr", default=None, metavar="HOST:PORT", help="ask a running service instead")
@click.option("--task", default="", help="only models with this task")
@click.option("--all-versions", is_flag=True, help="every version, not only the default")
@json_option
def list_command(registry, addr, task, all_versions, as_json):
    """List models (default versions unless --all-versions)."""
    if addr:
        from pixelrpc.clients.base import ServiceClient
        from pixelrpc.clients.cli.common import client_kwargs

        with ServiceClient(addr, **client_kwargs()) as c:
            rows = [m.to_json() for m in c.registry.list(task=task, all_versions=all_versions)]
    else:
        reg = open_registry(registry)
        rows = []
        for m in reg.list(task or None, all_versions=all_versions):
            row = manifest_json(m)
            row["default"] = reg.default_version(m.name) == m.version
            rows.append(row)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no models; add some with 'pixelrpc models bootstrap' or 'pixelrpc models import ...'")
        return
    click.echo(f"{'NAME':<28} {'VER':>4} {'TASKS':<40} {'SHA256':<14} DEFAULT")
    for r in rows:
        click.echo(f"{r['name']:<28} {r['version']:>4} {','.join(r['tasks']):<40} {r['sha256'][:12]:<14} "
                   f"{'*' if r.get('default') else ''}")


@models_group.command("show")
@click.argument("ref")
@registry_option
@json_option
def show_command(ref, registry, as_json):
    """Show the manifest of NAME[:VERSION]."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    m = open_registry(registry).resolve(name, version)
    data = manifest_json(m)
    if as_json:
        emit_json(data)
        return
    click.echo(f"{m.ref}  tasks={','.join(m.tasks)}  framework={m.framework}  created={m.created}")
    click.echo(f"sha256 {m.sha256}")
    for f in m.files:
        click.echo(f"  {f.name:<32} {f.size:>12,} bytes  {f.sha256[:16]}")
    for key, value in sorted(m.metadata.items()):
        text = str(value)
        click.echo(f"  {key}: {text if len(text) < 100 else text[:97] + '...'}")


@models_group.command("verify")
@click.argument("refs", nargs=-1)
@registry_option
@json_option
def verify_command(refs, registry, as_json):
    """Check every file's sha256 (all models, or the given NAME[:VERSION])."""
    from pixelrpc.models.errors import PixelRPCError
    from pixelrpc.models.registry import parse_ref

    reg = open_registry(registry)
    targets = [reg.resolve(*parse_ref(r)) for r in refs] if refs else reg.list(all_versions=True)
    results, bad = [], 0
    for m in targets:
        try:
            reg.verify(m)
            results.append({"model": m.ref, "ok": True})
        except PixelRPCError as exc:
            bad += 1
            results.append({"model": m.ref, "ok": False, "error": exc.message})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            click.echo(f"{r['model']:<32} {'ok' if r['ok'] else 'CORRUPT: ' + r['error']}")
    if bad:
        raise CliError(f"{bad} model(s) failed verification")


@models_group.command("remove")
@click.argument("ref")
@registry_option
def remove_command(ref, registry):
    """Remove NAME:VERSION (the version is required)."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    if version == 0:
        raise CliError("give the version to remove: NAME:VERSION")
    open_registry(registry).remove(name, version)
    click.echo(f"removed {name}:{version}")


@models_group.command("set-default")
@click.argument("ref")
@registry_option
def set_default_command(ref, registry):
    """Pin NAME:VERSION as the default version."""
    from pixelrpc.models.registry import parse_ref

    name, version = parse_ref(ref)
    open_registry(registry).set_default(name, version)
    click.echo(f"default of {name} is now {version}")


@models_group.group("import")
def import_group():
    """Import a model from an outside file into the registry."""


def _load_extensions() -> None:
    for name in IMPORT_MODULES:
        try:
            importlib.import_module(name).register_import(import_group)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name).register_models(models_group)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def register(group: click.Group) -> None:
    _load_extensions()
    group.add_command(models_group)
